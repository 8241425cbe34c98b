"""The CMOS RTC as a guest drives it: index/data ports, a fake clock, a line and a timer."""

from __future__ import annotations

import calendar
from typing import Callable

from pyvmm.devices import rtc
from pyvmm.devices.rtc import Rtc

#: 2026-12-02 07:08:09 UTC, a Wednesday, plus 0.25 s.
NOW = calendar.timegm((2026, 12, 2, 7, 8, 9, 0, 0, 0)) + 0.25


class Line:
    def __init__(self) -> None:
        self.high = False
        self.edges = 0

    def set_level(self, high: bool) -> None:
        self.edges += high and not self.high
        self.high = high


class Clock:
    """Wall and monotonic time moving together, and the timers asked for."""

    def __init__(self) -> None:
        self.wall, self.mono = NOW, 1000.25
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
        due = sorted((t for t in self.timers if t[0] <= self.mono), key=lambda t: t[0])
        self.timers = [t for t in self.timers if t[0] > self.mono]
        for _, callback in due:
            callback()


def make() -> tuple[Rtc, Line, Clock]:
    line, clock = Line(), Clock()
    device = Rtc(line, lambda when, fn: clock.timers.append((when, fn)),
                 wall_clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    return device, line, clock


def reg(device: Rtc, index: int) -> int:
    device.write(0, bytes([index]))
    data = memoryview(bytearray(1))
    device.read(1, data)
    return data[0]


def set_reg(device: Rtc, index: int, value: int) -> None:
    device.write(0, bytes([index]))
    device.write(1, bytes([value]))


def test_the_time_reads_in_bcd_24_hours_by_default() -> None:
    device, _, _ = make()
    assert [reg(device, i) for i in (0, 2, 4, 6, 7, 8, 9, rtc.CENTURY)] == \
        [0x09, 0x08, 0x07, 0x04, 0x02, 0x12, 0x26, 0x20]
    assert reg(device, rtc.REG_D) == rtc.D_VRT
    assert reg(device, rtc.REG_A) == 0x26


def test_binary_and_12_hour_modes() -> None:
    device, _, clock = make()
    set_reg(device, rtc.REG_B, rtc.B_BINARY)          # 12-hour, binary
    assert (reg(device, 4), reg(device, 9)) == (7, 26)
    clock.advance(12 * 3600)                           # 19:08: 7 PM
    assert reg(device, 4) == 0x80 | 7


def test_the_guest_sets_the_clock_and_it_runs_on() -> None:
    device, _, clock = make()
    set_reg(device, rtc.REG_B, rtc.B_SET | rtc.B_24H)
    for index, value in ((0, 0x30), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99),
                         (rtc.CENTURY, 0x19)):
        set_reg(device, index, value)
    clock.advance(5)                                   # held while SET is on
    assert reg(device, 0) == 0x30
    set_reg(device, rtc.REG_B, rtc.B_24H)
    clock.advance(31)                                  # 1999-12-31 23:59:30 + 31 s
    assert [reg(device, i) for i in (0, 2, 4, 7, 8, 9, rtc.CENTURY)] == \
        [0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]


def test_update_in_progress_shows_just_before_each_second() -> None:
    device, _, clock = make()
    assert not reg(device, rtc.REG_A) & rtc.A_UIP
    clock.advance(0.75 - 100e-6)
    assert reg(device, rtc.REG_A) & rtc.A_UIP
    clock.advance(200e-6)
    assert not reg(device, rtc.REG_A) & rtc.A_UIP


def test_the_periodic_interrupt_holds_the_line_until_c_is_read() -> None:
    device, line, clock = make()
    set_reg(device, rtc.REG_A, 0x20 | 15)              # 2 Hz
    reg(device, rtc.REG_C)
    set_reg(device, rtc.REG_B, rtc.B_24H | rtc.B_PIE)
    assert [when for when, _ in clock.timers] == [1000.5]
    clock.advance(0.3)
    assert (line.high, line.edges) == (True, 1)
    clock.advance(1.0)                                 # no more edges while it is high
    assert line.edges == 1
    assert reg(device, rtc.REG_C) == rtc.C_IRQF | rtc.C_PF | rtc.C_UF   # a second passed too
    assert not line.high
    assert reg(device, rtc.REG_C) == 0
    clock.advance(0.5)
    assert line.edges == 2


def test_flags_without_their_enable_raise_nothing() -> None:
    device, line, clock = make()
    reg(device, rtc.REG_C)
    clock.advance(1.0)
    assert reg(device, rtc.REG_C) == rtc.C_PF | rtc.C_UF    # 1024 Hz and a second passed
    assert line.edges == 0 and clock.timers == []


def test_update_ended_and_alarm_interrupts() -> None:
    device, line, clock = make()
    set_reg(device, rtc.SECONDS_ALARM, 0x12)           # 07:08:12, any hour and minute
    set_reg(device, rtc.MINUTES_ALARM, 0xFF)
    set_reg(device, rtc.HOURS_ALARM, 0xFF)
    reg(device, rtc.REG_C)
    set_reg(device, rtc.REG_B, rtc.B_24H | rtc.B_AIE)
    clock.advance(1.0)                                 # 07:08:10: no match
    assert not line.high
    clock.advance(2.0)                                 # 07:08:12
    assert line.high
    assert reg(device, rtc.REG_C) & (rtc.C_IRQF | rtc.C_AF) == rtc.C_IRQF | rtc.C_AF
    set_reg(device, rtc.REG_B, rtc.B_24H | rtc.B_UIE)
    clock.advance(1.0)
    assert reg(device, rtc.REG_C) == rtc.C_IRQF | rtc.C_UF | rtc.C_PF


def test_index_port_nmi_mask_ram_and_read_only_registers() -> None:
    device, _, _ = make()
    device.write(0, bytes([0x80 | 0x40]))
    assert device.nmi_masked and device.index == 0x40
    device.write(1, b"\x5a")
    assert reg(device, 0x40) == 0x5a and not device.nmi_masked
    set_reg(device, rtc.REG_D, 0)
    assert reg(device, rtc.REG_D) == rtc.D_VRT
    set_reg(device, 0x7F, 1)
    assert reg(device, 0x7F) == 1 and reg(device, 0xFF) == 1   # 7-bit index


def test_a_nonsense_date_leaves_the_clock_alone() -> None:
    device, _, _ = make()
    set_reg(device, 8, 0x13)                           # month 13
    set_reg(device, 7, 0x45)                           # day 45
    assert (reg(device, 8), reg(device, 7)) == (0x12, 0x02)


def test_rates() -> None:
    assert [rtc.periodic_hz(rs) for rs in (0, 1, 2, 3, 6, 15)] == [0, 256, 128, 8192, 1024, 2]


def test_any_port_traffic_is_answered_and_the_line_follows_the_flags() -> None:
    """A hostile guest's port accesses never raise, and leave a bounded number of timers."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    accesses = st.lists(st.tuples(st.booleans(), st.integers(0, 1), st.integers(0, 255),
                                  st.floats(0, 2)), max_size=60)

    @settings(max_examples=300, deadline=None)
    @given(accesses)
    def check(steps: list[tuple[bool, int, int, float]]) -> None:
        device, line, clock = make()
        for write, offset, value, wait in steps:
            if write:
                device.write(offset, bytes([value]))
            else:
                data = memoryview(bytearray(1))
                device.read(offset, data)
            clock.advance(wait)
            assert len(clock.timers) <= 64
            # After the timers ran, the line is high exactly when an enabled flag waits.
            assert line.high == device._pending()

    check()
