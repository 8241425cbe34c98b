"""The address bus: ranges, overlaps, offsets."""

from __future__ import annotations

import pytest

from pyvmm.devices.bus import Bus, BusError


class Recorder:
    def __init__(self) -> None:
        self.accesses: list[tuple[str, int, bytes]] = []

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes([offset]) * len(data)
        self.accesses.append(("r", offset, bytes(data)))

    def write(self, offset: int, data) -> None:
        self.accesses.append(("w", offset, bytes(data)))


def test_dispatch_with_offsets() -> None:
    bus, device = Bus(), Recorder()
    bus.insert(device, 0x3F8, 8)
    data = bytearray(1)
    assert bus.read(0x3FD, memoryview(data))
    assert bus.write(0x3F8, b"A")
    assert device.accesses == [("r", 5, b"\x05"), ("w", 0, b"A")]


def test_miss_returns_false() -> None:
    bus = Bus()
    bus.insert(Recorder(), 0x60, 5)
    assert not bus.read(0x5F, memoryview(bytearray(1)))
    assert not bus.write(0x65, b"x")


@pytest.mark.parametrize("base,length", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20)])
def test_overlaps_refused(base: int, length: int) -> None:
    bus = Bus()
    bus.insert(Recorder(), 0x3F8, 8)
    with pytest.raises(BusError, match="overlaps"):
        bus.insert(Recorder(), base, length)


def test_adjacent_ranges_and_empty_range() -> None:
    bus = Bus()
    first, second = Recorder(), Recorder()
    bus.insert(first, 0x10, 0x10)
    bus.insert(second, 0x20, 0x10)
    bus.insert(Recorder(), 0x0, 0x10)
    bus.write(0x1F, b"a")
    bus.write(0x20, b"b")
    assert first.accesses == [("w", 0xF, b"a")]
    assert second.accesses == [("w", 0, b"b")]
    with pytest.raises(BusError):
        bus.insert(Recorder(), 0x100, 0)
