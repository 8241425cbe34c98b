"""Each legacy device's state survives ``to_state`` -> JSON -> ``from_state`` into a new one:
the new device answers the guest as the old one would have."""

from __future__ import annotations

import json

from pyvmm.devices import serial as uart
from pyvmm.devices.i8042 import CMD_READ_CTR, CMD_WRITE_CTR, COMMAND_OFFSET, DATA_OFFSET, I8042
from pyvmm.devices.serial import Serial

from tests.unit.devices.conftest import FakeLine, rd
from tests.unit.devices.test_rtc import make as make_rtc, reg
from pyvmm.devices import rtc


def _through_json(state: dict) -> dict:
    return json.loads(json.dumps(state))


def test_the_uart_keeps_registers_input_and_its_interrupt() -> None:
    line, out = FakeLine(), bytearray()
    old = Serial(line, out.extend)
    old.write(uart.LCR, bytes([0x80]))          # DLAB: divisor 12 (9600 baud)
    old.write(uart.RBR_THR_DLL, bytes([12]))
    old.write(uart.LCR, bytes([0x03]))
    old.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    old.write(uart.SCR, bytes([0x5A]))
    old.write(uart.RBR_THR_DLL, b"p")            # a prompt without its newline
    old.enqueue_input(b"typed")
    assert line.high
    state = _through_json(old.to_state())
    assert out == b"p"  # what the guest sent is written out before the state is taken

    new_line, new_out = FakeLine(), bytearray()
    new = Serial(new_line, new_out.extend)
    new.from_state(state)
    assert new_line.high  # data waiting with RX interrupts on
    assert rd(new, uart.SCR) == 0x5A and rd(new, uart.LCR) == 0x03
    assert bytes(rd(new, uart.RBR_THR_DLL) for _ in range(5)) == b"typed"
    assert not new_line.high
    new.write(uart.LCR, bytes([0x83]))
    assert rd(new, uart.RBR_THR_DLL) == 12


def test_the_uart_keeps_input_that_wraps_around_its_ring() -> None:
    old = Serial(FakeLine(), lambda data: None)
    old.enqueue_input(b"-" * (uart.INPUT_CAPACITY - 2))
    for _ in range(uart.INPUT_CAPACITY - 2):
        rd(old, uart.RBR_THR_DLL)
    old.enqueue_input(b"ls -l\n")  # 2 bytes before the ring's end, 4 after
    state = _through_json(old.to_state())
    assert bytes.fromhex(state["input"]) == b"ls -l\n"
    new = Serial(FakeLine(), lambda data: None)
    new.from_state(state)
    assert bytes(rd(new, uart.RBR_THR_DLL) for _ in range(6)) == b"ls -l\n"
    assert not rd(new, uart.LSR) & uart.LSR_DATA_READY


def test_the_uart_tells_its_fast_path_whether_thr_writes_may_be_batched() -> None:
    old = Serial(FakeLine(), lambda data: None)
    old.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    told: list[bool] = []
    new = Serial(FakeLine(), lambda data: None, on_tx_polled=told.append)
    new.from_state(_through_json(old.to_state()))
    assert told == [False]


def test_the_i8042_keeps_its_configuration_byte_and_a_pending_command() -> None:
    old = I8042(lambda: None)
    old.write(COMMAND_OFFSET, bytes([CMD_WRITE_CTR]))
    old.write(DATA_OFFSET, bytes([0x61]))
    old.write(COMMAND_OFFSET, bytes([CMD_READ_CTR]))   # the answer waits in the output
    new = I8042(lambda: None)
    new.from_state(_through_json(old.to_state()))
    assert rd(new, COMMAND_OFFSET) & 0x01
    assert rd(new, DATA_OFFSET) == 0x61


def test_the_rtc_keeps_cmos_the_guests_clock_offset_and_its_interrupt() -> None:
    old, _line, clock = make_rtc()
    old.write(0, bytes([0x40]))
    old.write(1, bytes([0x99]))                # a CMOS RAM byte
    old.write(0, bytes([rtc.HOURS]))
    old.write(1, bytes([0x23]))                # the guest sets its clock to 23h (BCD)
    old.write(0, bytes([rtc.REG_B]))
    old.write(1, bytes([rtc.B_24H | rtc.B_UIE]))
    state = _through_json(old.to_state())

    new, new_line, new_clock = make_rtc()
    new_clock.wall, new_clock.mono = clock.wall + 10, clock.mono + 10   # restored later
    new.from_state(state)
    assert reg(new, 0x40) == 0x99
    assert reg(new, rtc.HOURS) == 0x23          # the guest's time, moved on with the host's
    assert new_clock.timers                    # update interrupts still armed
    new_clock.advance(1.0)
    assert new_line.high
