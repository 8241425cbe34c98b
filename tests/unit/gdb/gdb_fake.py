"""A fake gdb target: registers in dicts, bytes-backed RAM, optional page tables."""

from __future__ import annotations

from typing import Mapping

from pyvmm.dump.pagewalk import PageWalkError, translate
from pyvmm.errors import GuestMemoryError
from pyvmm.gdb.registers import REGISTERS
from pyvmm.gdb.target import Debugging, MemoryFault, Stop
from pyvmm.memory import GuestMemory

READ_ONLY = frozenset(("cr0", "cr3", "cs"))


class FakeTarget:
    notify_fd = -1

    def __init__(self, cpus: int = 2, cr3: int | None = None, cr4: int = 0) -> None:
        self._cpus = cpus
        self.regs = [{r.name: 0 for r in REGISTERS} for _ in range(cpus)]
        self.memory = GuestMemory.from_bytes(16 << 20)
        self.cr3, self.cr4 = cr3, cr4
        self.resumed: list[tuple[dict[int, str], Debugging | None]] = []
        self.pending: list[Stop] = []
        self.stop_alls = 0
        self.killed = False
        self.monitored: list[str] = []
        #: Z type -> why the back end can't (as kvm_pvm says of watchpoints).
        self.unavailable: dict[int, str] = {}

    @property
    def cpus(self) -> int:
        return self._cpus

    @property
    def holding(self) -> bool:
        return not self.resumed

    def held_seconds(self) -> float:
        return 0.0

    def registers(self, cpu: int) -> dict[str, int]:
        return dict(self.regs[cpu])

    def set_registers(self, cpu: int, values: Mapping[str, int]) -> None:
        if READ_ONLY & set(values):
            raise ValueError("read-only")
        self.regs[cpu].update(values)

    def translate(self, cpu: int, vaddr: int) -> int:
        if self.cr3 is None:
            return vaddr
        try:
            return translate(self.memory.read_u64, self.cr3, self.cr4, vaddr).paddr
        except PageWalkError as exc:
            raise MemoryFault(str(exc)) from None

    def read_physical(self, paddr: int, length: int) -> bytes:
        try:
            return self.memory.read(paddr, length)
        except GuestMemoryError as exc:
            raise MemoryFault(str(exc)) from None

    def write_physical(self, paddr: int, data: bytes) -> None:
        try:
            self.memory.write(paddr, data)
        except GuestMemoryError as exc:
            raise MemoryFault(str(exc)) from None

    def stop_all(self) -> None:
        self.stop_alls += 1

    def resume(self, actions: Mapping[int, str], debugging: Debugging | None) -> None:
        self.resumed.append((dict(actions), debugging))

    def take_stop(self) -> Stop | None:
        return self.pending.pop(0) if self.pending else None

    def describe(self, cpu: int) -> str:
        return f"vCPU {cpu}"

    def monitor(self, command: str) -> str:
        self.monitored.append(command)
        if command.startswith("dump "):
            return "dumped\n"
        raise ValueError(f"unknown monitor command {command!r}")

    def point_unavailable(self, kind: int) -> str | None:
        return self.unavailable.get(kind)

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        pass
