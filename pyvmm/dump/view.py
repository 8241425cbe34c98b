"""A guest as inspect sees it: physical reads, virtual reads through a vCPU's tables."""

from __future__ import annotations

from pyvmm.dump import DumpError
from pyvmm.dump.core import CoreDump
from pyvmm.dump.pagewalk import PageWalkError, Walk, translate
from pyvmm.dump.symbols import kernel_virt_to_phys

CR0_PG = 1 << 31


class GuestView:
    """Reads guest memory from a dump by physical or (through CR3) virtual address."""

    def __init__(self, dump: CoreDump, cpu: int = 0) -> None:
        if dump.vcpus and not 0 <= cpu < len(dump.vcpus):
            raise DumpError(f"--cpu {cpu}: the dump has vCPUs 0-{len(dump.vcpus) - 1}")
        self.dump = dump
        self.vcpu = dump.vcpus[cpu] if dump.vcpus else None

    @property
    def paging(self) -> bool:
        return bool(self.vcpu and self.vcpu.control.get("cr0", 0) & CR0_PG
                    and self.vcpu.control.get("cr3", 0))

    def walk(self, vaddr: int) -> Walk:
        if not self.paging:
            raise DumpError("the vCPU had paging off: there are no page tables to walk")
        assert self.vcpu is not None
        try:
            return translate(self.dump.read_u64, self.vcpu.control["cr3"],
                             self.vcpu.control.get("cr4", 0), vaddr)
        except DumpError as exc:
            raise PageWalkError(f"{vaddr:#x}: a page table is outside the dump's RAM ({exc})",
                                []) from None

    def to_phys(self, vaddr: int) -> int:
        if self.paging:
            try:
                return self.walk(vaddr).paddr
            except PageWalkError:
                pass
        paddr = kernel_virt_to_phys(vaddr)
        if paddr is None:
            raise DumpError(f"{vaddr:#x} does not map to guest RAM")
        return paddr

    def read_virt(self, vaddr: int, length: int) -> bytes:
        """``length`` bytes at ``vaddr``, translated page by page."""
        parts = []
        while length > 0:
            count = min(length, 4096 - (vaddr & 0xFFF))
            parts.append(self.dump.read(self.to_phys(vaddr), count))
            vaddr += count
            length -= count
        return b"".join(parts)
