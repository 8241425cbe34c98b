"""One vCPU's registers as a dump records them (from KVM_GET_REGS / KVM_GET_SREGS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "efer")


@dataclass
class CoreSegment:
    """A segment register as a core dump records it (selector, base, limit, attributes)."""

    selector: int = 0
    base: int = 0
    limit: int = 0
    #: Descriptor attributes as in a GDT entry's high dword (type at bit 8 ...).
    flags: int = 0


@dataclass
class VcpuRegisters:
    """General, segment, table and control registers of one vCPU."""

    index: int
    regs: dict[str, int] = field(default_factory=dict)
    segments: dict[str, CoreSegment] = field(default_factory=dict)
    control: dict[str, int] = field(default_factory=dict)
    gdt: tuple[int, int] = (0, 0)  # base, limit
    idt: tuple[int, int] = (0, 0)

    @classmethod
    def from_kvm(cls, index: int, regs: dict[str, int], sregs: dict[str, Any]) -> "VcpuRegisters":
        segments = {}
        for name in SEGMENTS:
            s = sregs[name]
            flags = (s["type"] << 8) | (s["s"] << 12) | (s["dpl"] << 13) | \
                (s["present"] << 15) | (s["avl"] << 20) | (s["l"] << 21) | \
                (s["db"] << 22) | (s["g"] << 23)
            segments[name] = CoreSegment(s["selector"], s["base"], s["limit"], flags)
        return cls(index=index, regs={k: regs.get(k, 0) for k in GENERAL},
                   segments=segments,
                   control={k: sregs.get(k, 0) for k in CONTROL},
                   gdt=sregs.get("gdt", (0, 0)), idt=sregs.get("idt", (0, 0)))

    def reg(self, name: str) -> int:
        return self.regs.get(name, self.control.get(name, 0))
