"""Small PC devices: ports answered quietly, and the QEMU-style debug-exit port."""

from __future__ import annotations

from typing import Callable


class IgnoredPorts:
    """Ports Linux probes on a PC that have nothing behind them: reads all-ones."""

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        pass


class DebugExit:
    """QEMU ``isa-debug-exit``: the guest writes ``v``; the VMM exits ``(v << 1) | 1``.

    The status is odd, so it never looks like a clean exit nor like one of
    pyvmm's own (even) statuses.
    """

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        value = int.from_bytes(data, "little")
        self._on_exit(((value << 1) | 1) & 0xFF)
