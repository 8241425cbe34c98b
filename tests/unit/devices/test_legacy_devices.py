"""i8042 reset paths and the debug-exit port."""

from __future__ import annotations

import pytest

from pyvmm.devices.i8042 import COMMAND_OFFSET, DATA_OFFSET, I8042
from pyvmm.devices.legacy import DebugExit, IgnoredPorts

from tests.unit.devices.conftest import rd


def test_reset_command() -> None:
    resets = []
    device = I8042(lambda: resets.append(1))
    device.write(COMMAND_OFFSET, b"\xfe")
    assert resets == [1]


def test_reset_through_output_port() -> None:
    resets = []
    device = I8042(lambda: resets.append(1))
    device.write(COMMAND_OFFSET, b"\xd1")
    device.write(DATA_OFFSET, b"\x01")  # reset line high: nothing
    assert resets == []
    device.write(COMMAND_OFFSET, b"\xd1")
    device.write(DATA_OFFSET, b"\xfe")
    assert resets == [1]


def test_self_test_and_command_byte() -> None:
    device = I8042(lambda: None)
    assert rd(device, COMMAND_OFFSET) & 1 == 0
    device.write(COMMAND_OFFSET, b"\xaa")
    assert rd(device, COMMAND_OFFSET) & 1 == 1
    assert rd(device, DATA_OFFSET) == 0x55
    assert rd(device, COMMAND_OFFSET) & 1 == 0
    device.write(COMMAND_OFFSET, b"\x60")
    device.write(DATA_OFFSET, b"\x11")
    device.write(COMMAND_OFFSET, b"\x20")
    assert rd(device, DATA_OFFSET) == 0x11


@pytest.mark.parametrize("data,status", [(b"\x00", 1), (b"\x01", 3), (b"\x10", 33),
                                         (b"\x05\x00\x00\x00", 11), (b"\x80", 1)])
def test_debug_exit_status(data: bytes, status: int) -> None:
    seen: list[int] = []
    DebugExit(seen.append).write(0, data)
    assert seen == [status]


def test_ignored_ports_read_all_ones() -> None:
    data = bytearray(4)
    IgnoredPorts().read(0, memoryview(data))
    assert data == b"\xff" * 4


# -- pvpanic and ACPI sleep control -----------------------------------------------

from pyvmm.devices.platform import PvPanic, SleepControl  # noqa: E402


def test_pvpanic_reports_capabilities_and_panics() -> None:
    panics = []
    device = PvPanic(lambda: panics.append(1))
    assert rd(device, 0) == 0b11
    device.write(0, b"\x02")  # crash kernel loaded: not a stop
    assert panics == []
    device.write(0, b"\x01")
    assert panics == [1]


@pytest.mark.parametrize("value, stops", [
    (0x34, True),     # SLP_EN | SLP_TYP 5: S5 poweroff
    (0x14, False),    # SLP_TYP 5 without SLP_EN
    (0x2C, False),    # SLP_EN | SLP_TYP 3 (S3): not supported
])
def test_sleep_control_powers_off_on_s5(value: int, stops: bool) -> None:
    stopped = []
    device = SleepControl(lambda: stopped.append(1))
    device.write(0, bytes([value]))
    device.write(1, b"\xff")  # the status register never stops the VM
    assert bool(stopped) is stops
