"""What the gdb session needs of a machine: the ``Target`` protocol and its stop events.

A target has vCPUs numbered from 0 (gdb's threads 1, 2, ...), registers as
``pyvmm.gdb.registers`` names them, physical memory and a page walk, and
can stop every vCPU or let some run (one single-stepping, the others held).
``pyvmm.vmm.gdb_target`` is the machine's; the unit tests use a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

SIGINT = 2
SIGTRAP = 5


class MemoryFault(Exception):
    """The address does not map (unmapped page, or outside guest RAM)."""


@dataclass(frozen=True)
class Stop:
    """A vCPU stopped for gdb: ``signal`` (SIGTRAP or SIGINT) and why (``reason``:
    swbreak, hwbreak, watch, rwatch, awatch, or empty for a step or a stop
    request), with the data ``address`` of a watchpoint hit."""

    cpu: int
    signal: int = SIGTRAP
    reason: str = ""
    address: int = 0


@dataclass(frozen=True)
class Debugging:
    """What the vCPUs trap for while gdb is attached: our ``int3`` addresses
    (guest-virtual) and the debug registers DR0-DR7 (``pyvmm.gdb.debugregs``)."""

    breakpoints: frozenset[int] = frozenset()
    debugreg: tuple[int, ...] = (0,) * 8
    #: Hardware point types by slot, to name a DR6 hit.
    hw_types: tuple[int, ...] = ()


class Target(Protocol):
    #: Readable when a running vCPU stopped for gdb (then ``take_stop``).
    notify_fd: int

    @property
    def cpus(self) -> int:
        """How many vCPUs."""

    @property
    def holding(self) -> bool:
        """Whether gdb holds the vCPUs now."""

    def held_seconds(self) -> float:
        """How long gdb has held the guest, in all (``--timeout`` doesn't count it)."""

    def registers(self, cpu: int) -> dict[str, int]:
        """Every register in ``pyvmm.gdb.registers.REGISTERS`` by name."""

    def set_registers(self, cpu: int, values: Mapping[str, int]) -> None:
        """Change the named registers; ValueError naming one that can't be written."""

    def translate(self, cpu: int, vaddr: int) -> int:
        """Guest-physical address of ``vaddr`` in ``cpu``'s address space; MemoryFault."""

    def read_physical(self, paddr: int, length: int) -> bytes:
        """Guest RAM; MemoryFault outside it."""

    def write_physical(self, paddr: int, data: bytes) -> None:
        """Guest RAM; MemoryFault outside it."""

    def stop_all(self) -> None:
        """Every vCPU out of the guest and held, before this returns."""

    def resume(self, actions: Mapping[int, str], debugging: Debugging | None) -> None:
        """Let the vCPUs in ``actions`` run: ``c`` continue, ``s`` one instruction;
        the others stay held.  ``debugging`` None: no traps at all (detached)."""

    def take_stop(self) -> Stop | None:
        """The stop a running vCPU reported since ``resume`` (the first), or None."""

    def describe(self, cpu: int) -> str:
        """A few words about ``cpu`` for ``info threads``."""

    def monitor(self, command: str) -> str:
        """The output of a ``monitor`` command; ValueError for an unknown one."""

    def point_unavailable(self, kind: int) -> str | None:
        """Why this back end can't deliver hardware points of gdb's type ``kind``
        (1 breakpoint, 2-4 watchpoints), or None when it can."""

    def kill(self) -> None:
        """End the machine (gdb's ``kill``)."""

    def close(self) -> None:
        """Release ``notify_fd``."""
