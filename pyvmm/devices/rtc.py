"""The PC's CMOS real-time clock (Motorola MC146818), at ports 0x70/0x71 on IRQ 8.

What Linux's ``rtc_cmos`` driver, ``hwclock`` and the kselftests use: the
time and date (BCD or binary, 12 or 24 hours; the host's UTC plus an offset
the guest sets), the update-in-progress bit, the three interrupt sources
(periodic at 2-8192 Hz, alarm with "don't care" fields, update-ended once a
second) with their flags in register C, cleared by reading it, and 114 bytes
of CMOS RAM.  Port 0x70's top bit masks NMIs; it is kept, as a real chipset
keeps it, and changes nothing else.

The clock is computed from the host's clocks when read, not ticked: a flag
is set by comparing now with when register C was last read.  Only while an
interrupt is enabled does the device ask for a call (``schedule(when, fn)``,
the event loop's timer) at the next event, to raise IRQ 8.  The line stays
high until register C is read, as on the chip, so each edge the IOAPIC sees
is one interrupt.
"""

from __future__ import annotations

import calendar
import threading
import time
from typing import Callable

from pyvmm.devices.irq import InterruptLine

#: Register indices (port 0x71 reads/writes the register port 0x70 selected).
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = range(6)
WEEKDAY, DAY, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
#: The CMOS byte holding the century (BCD), as the FADT's ``century`` field says.
CENTURY = 0x32
#: Bytes of CMOS (clock registers and RAM) behind the 7-bit index.
CMOS_SIZE = 128

# Register A: update in progress, divider, rate select.
A_UIP = 0x80
A_DIVIDER = 0x70
A_RATE = 0x0F
#: 32.768 kHz time base (the only divider that runs the clock), 1024 Hz rate.
A_DEFAULT = 0x26
DIVIDER_RUNNING = 0x20
# Register B.
B_SET, B_PIE, B_AIE, B_UIE = 0x80, 0x40, 0x20, 0x10
B_BINARY, B_24H = 0x04, 0x02
# Register C: the flags, and IRQF when an enabled one is set.
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
# Register D: the battery is good (the time is valid).
D_VRT = 0x80
#: The index port's NMI-mask bit.
NMI_DISABLE = 0x80
#: How long before each second's update UIP reads 1 (the chip's 244 us).
UIP_SECONDS = 244e-6
#: Alarm register values 0xC0-0xFF match any value.
DONT_CARE = 0xC0
#: Seconds checked one by one for an alarm after a long gap (a day covers every match).
ALARM_LOOKBACK = 86400


def periodic_hz(rate_select: int) -> int:
    """The periodic interrupt's rate for register A's RS bits (0: off)."""
    if rate_select == 0:
        return 0
    if rate_select < 3:
        return 65536 >> (rate_select + 7)   # 1: 256 Hz, 2: 128 Hz
    return 65536 >> rate_select             # 3: 8192 Hz ... 15: 2 Hz


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Rtc:
    """An MC146818 on the bus at base 0x70 (two ports: index, data)."""

    def __init__(self, irq: InterruptLine,
                 schedule: Callable[[float, Callable[[], None]], None],
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._irq = irq
        self._schedule = schedule
        self._wall = wall_clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.cmos = bytearray(CMOS_SIZE)
        self.cmos[REG_A], self.cmos[REG_B], self.cmos[REG_D] = A_DEFAULT, B_24H, D_VRT
        self.index = 0
        #: The NMI mask the guest last wrote to port 0x70 (kept, as a chipset keeps it).
        self.nmi_masked = False
        #: Guest seconds minus host seconds (``hwclock -w`` sets it).
        self._offset = 0.0
        #: The guest's time while register B's SET bit holds the clock still.
        self._held: list[int] | None = None
        self._flags = 0
        #: Up to when (monotonic) flags are accounted for.
        self._checked = monotonic()
        self._next_call: float | None = None

    # -- snapshot -----------------------------------------------------------------------

    def to_state(self) -> dict:
        """CMOS, the index, and the guest's clock as an offset from the host's UTC (so a
        restore later reads a clock that moved on, as a PC's battery-backed one does)."""
        with self._lock:
            self._account(self._monotonic())
            return {"cmos": self.cmos.hex(), "index": self.index,
                    "nmi_masked": self.nmi_masked, "offset": self._offset,
                    "held": self._held, "flags": self._flags}

    def from_state(self, state: dict) -> None:
        """Take ``to_state``'s values; the interrupt line and the timer follow them."""
        with self._lock:
            cmos = bytes.fromhex(state["cmos"])
            if len(cmos) != CMOS_SIZE:
                raise ValueError(f"RTC state: {len(cmos)} bytes of CMOS, not {CMOS_SIZE}")
            self.cmos[:] = cmos
            self.index, self.nmi_masked = state["index"], bool(state["nmi_masked"])
            self._offset, self._flags = float(state["offset"]), state["flags"]
            self._held = list(state["held"]) if state["held"] is not None else None
            self._checked = self._monotonic()
            self._irq.set_level(self._pending())
            self._arm()

    # -- the bus ------------------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            if offset == 0:
                value = self.index | (NMI_DISABLE if self.nmi_masked else 0)
            else:
                value = self._read_register(self.index)
        data[:] = bytes([value]) * len(data)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        value = data[0]
        with self._lock:
            if offset == 0:
                self.index = value & (CMOS_SIZE - 1)
                self.nmi_masked = bool(value & NMI_DISABLE)
            else:
                self._write_register(self.index, value)

    # -- registers ----------------------------------------------------------------------

    def _read_register(self, index: int) -> int:
        if index <= YEAR and index not in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM):
            return self._encode_field(index, self._fields()[index])
        if index == CENTURY:
            return self._encode(self._fields()[CENTURY])
        if index == REG_A:
            running = self._held is None and self.cmos[REG_A] & A_DIVIDER == DIVIDER_RUNNING
            now = self._wall() + self._offset
            uip = running and now % 1.0 >= 1.0 - UIP_SECONDS
            return (self.cmos[REG_A] & ~A_UIP) | (A_UIP if uip else 0)
        if index == REG_C:
            self._account(self._monotonic())
            value = self._flags | (C_IRQF if self._pending() else 0)
            self._flags = 0
            self._irq.set_level(False)
            self._arm()
            return value
        return self.cmos[index]

    def _write_register(self, index: int, value: int) -> None:
        if index <= YEAR and index not in (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM) \
                or index == CENTURY:
            fields = self._held if self._held is not None else self._fields()
            decoded = self._decode_field(index, value) if index != CENTURY \
                else self._decode(value)
            fields[index] = decoded
            if self._held is None:
                self._set_time(fields)
            return
        if index in (REG_C, REG_D):
            return  # read-only
        if index == REG_A:
            value &= ~A_UIP
        if index == REG_B:
            self._account(self._monotonic())
            if value & B_SET and self._held is None:
                self._held = self._fields()
            elif not value & B_SET and self._held is not None:
                held, self._held = self._held, None
                self._set_time(held)
            if value & B_SET:
                value &= ~B_UIE  # the chip clears UIE while SET is on
        self.cmos[index] = value
        if index in (REG_A, REG_B):
            self._irq.set_level(self._pending())
            self._arm()

    # -- time ---------------------------------------------------------------------------

    def _fields(self) -> list[int]:
        """The guest's time as register values decoded (index -> value; CENTURY too)."""
        if self._held is not None:
            return list(self._held)
        moment = time.gmtime(int(self._wall() + self._offset))
        fields = [0] * (CENTURY + 1)
        fields[SECONDS], fields[MINUTES], fields[HOURS] = \
            moment.tm_sec, moment.tm_min, moment.tm_hour
        fields[WEEKDAY] = (moment.tm_wday + 1) % 7 + 1   # Sunday is 1
        fields[DAY], fields[MONTH] = moment.tm_mday, moment.tm_mon
        fields[YEAR], fields[CENTURY] = moment.tm_year % 100, moment.tm_year // 100
        return fields

    def _set_time(self, fields: list[int]) -> None:
        """Make the guest's clock read ``fields`` now (an invalid date leaves it alone)."""
        try:
            seconds = calendar.timegm((fields[CENTURY] * 100 + fields[YEAR], fields[MONTH],
                                       fields[DAY], fields[HOURS], fields[MINUTES],
                                       fields[SECONDS], 0, 0, 0))
        except (ValueError, OverflowError):
            return
        if not (1 <= fields[MONTH] <= 12 and 1 <= fields[DAY] <= 31):
            return
        self._offset = seconds - int(self._wall())

    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _from_bcd(value)

    def _encode_field(self, index: int, value: int) -> int:
        if index == HOURS and not self.cmos[REG_B] & B_24H:
            pm = value >= 12
            return self._encode(value % 12 or 12) | (0x80 if pm else 0)
        return self._encode(value)

    def _decode_field(self, index: int, value: int) -> int:
        if index == HOURS and not self.cmos[REG_B] & B_24H:
            hour = self._decode(value & 0x7F) % 12
            return hour + 12 if value & 0x80 else hour
        return self._decode(value)

    def _alarm_matches(self, moment: time.struct_time) -> bool:
        for alarm, now in ((SECONDS_ALARM, moment.tm_sec), (MINUTES_ALARM, moment.tm_min),
                           (HOURS_ALARM, moment.tm_hour)):
            value = self.cmos[alarm]
            if value & DONT_CARE == DONT_CARE:
                continue
            wanted = self._decode_field(HOURS, value) if alarm == HOURS_ALARM \
                else self._decode(value)
            if wanted != now:
                return False
        return True

    # -- flags and the interrupt ---------------------------------------------------------

    def _pending(self) -> bool:
        """An enabled source's flag is set (register B's enables sit on C's flag bits)."""
        return bool(self._flags & self.cmos[REG_B] & (B_PIE | B_AIE | B_UIE))

    def _account(self, now: float) -> None:
        """Set the flags of every event between the last look and ``now``."""
        start, self._checked = self._checked, now
        if now <= start:
            return
        hz = periodic_hz(self.cmos[REG_A] & A_RATE)
        if hz and int(now * hz) != int(start * hz):
            self._flags |= C_PF
        if self._held is not None:
            return  # no updates while SET holds the clock
        offset = self._offset + self._wall() - now   # guest wall time = monotonic + this
        first, last = int(start + offset), int(now + offset)
        if last != first:
            self._flags |= C_UF
            for second in range(max(first + 1, last - ALARM_LOOKBACK + 1), last + 1):
                if self._alarm_matches(time.gmtime(second)):
                    self._flags |= C_AF
                    break

    def _next_event(self, now: float) -> float | None:
        """When the next enabled interrupt's flag would be set (monotonic), or None."""
        enabled = self.cmos[REG_B]
        times = []
        hz = periodic_hz(self.cmos[REG_A] & A_RATE)
        if enabled & B_PIE and hz:
            times.append((int(now * hz) + 1) / hz)
        if enabled & (B_AIE | B_UIE) and self._held is None:
            offset = self._offset + self._wall() - now
            times.append(int(now + offset) + 1 - offset)
        return min(times) if times else None

    def _arm(self) -> None:
        """Ask for a call at the next enabled event, unless one is asked for sooner."""
        if self._pending():
            return  # the line is high until register C is read
        when = self._next_event(self._monotonic())
        if when is None or (self._next_call is not None and self._next_call <= when):
            return
        self._next_call = when
        self._schedule(when, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._next_call = None
            self._account(self._monotonic())
            if self._pending():
                self._irq.set_level(True)
            else:
                self._arm()
