"""Address buses: map ``[base, base+length)`` ranges to devices, refuse overlaps.

One ``Bus`` serves port I/O and another MMIO.  A device sees only an offset
into its own range and the bytes of the access (as Firecracker's BusDevice).
"""

from __future__ import annotations

import bisect
from typing import Protocol

from pyvmm.errors import PyvmmError


class BusError(PyvmmError):
    """A device range overlaps another or is empty."""


class BusDevice(Protocol):
    """What a bus needs of a device."""

    def read(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` (the access size) with the value at ``offset``."""

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Take the ``data`` written at ``offset``."""


class Bus:
    """Sorted, non-overlapping ranges; lookup by bisect."""

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, BusDevice]] = []  # (base, end, device)

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        """Map ``device`` at ``[base, base+length)``; BusError if that overlaps."""
        if length <= 0:
            raise BusError(f"device range at {base:#x} has no length")
        end = base + length
        index = bisect.bisect_left(self._bases, base)
        if index > 0 and self._entries[index - 1][1] > base:
            raise BusError(f"device range {base:#x}-{end - 1:#x} overlaps one at "
                           f"{self._entries[index - 1][0]:#x}")
        if index < len(self._entries) and self._entries[index][0] < end:
            raise BusError(f"device range {base:#x}-{end - 1:#x} overlaps one at "
                           f"{self._entries[index][0]:#x}")
        self._bases.insert(index, base)
        self._entries.insert(index, (base, end, device))

    def _find(self, addr: int) -> tuple[int, BusDevice] | None:
        index = bisect.bisect_right(self._bases, addr) - 1
        if index >= 0:
            base, end, device = self._entries[index]
            if addr < end:
                return addr - base, device
        return None

    def read(self, addr: int, data: memoryview) -> bool:
        """Let the device at ``addr`` fill ``data``; False if none is mapped there."""
        found = self._find(addr)
        if found is None:
            return False
        found[1].read(found[0], data)
        return True

    def write(self, addr: int, data: bytes | memoryview) -> bool:
        """Hand ``data`` to the device at ``addr``; False if none is mapped there."""
        found = self._find(addr)
        if found is None:
            return False
        found[1].write(found[0], data)
        return True
