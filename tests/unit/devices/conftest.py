"""What the device tests share (the vCPU's UART fast path tests too): an interrupt
line that records its levels, and a one-byte register read."""

from __future__ import annotations

from pyvmm.devices.bus import BusDevice


class FakeLine:
    """An ``InterruptLine`` that keeps every level it was set to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    @property
    def edges(self) -> int:
        """How many times the line rose (it starts low)."""
        return sum(high and not before for before, high in zip([False, *self.levels], self.levels))


def rd(device: BusDevice, offset: int) -> int:
    """The byte a one-byte read of ``device`` at ``offset`` returns."""
    data = bytearray(1)
    device.read(offset, memoryview(data))
    return data[0]
