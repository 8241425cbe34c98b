"""Pack GDT descriptors and turn them into segment register state.

Linux's 64-bit boot protocol wants ``__BOOT_CS`` = 0x10 and ``__BOOT_DS`` =
0x18, so the boot GDT is: null, 32-bit code (for the PVH entry, which starts
in protected mode), 64-bit code, data, TSS.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Descriptor flag words (access byte in bits 0..7, flags nibble in 12..15).
FLAGS_CODE32 = 0xC09B  # present, ring 0, code exec/read accessed, D=1, G=1
FLAGS_CODE64 = 0xA09B  # present, ring 0, code exec/read accessed, L=1, G=1
FLAGS_DATA = 0xC093    # present, ring 0, data read/write accessed, D/B=1, G=1
FLAGS_TSS = 0x808B     # present, busy 32/64-bit TSS, G=1

BOOT_CS32_SELECTOR = 0x08
BOOT_CS_SELECTOR = 0x10
BOOT_DS_SELECTOR = 0x18
BOOT_TSS_SELECTOR = 0x20

#: (flags, base, limit) of each boot GDT slot, by index (selector / 8).
BOOT_GDT = (
    (0, 0, 0),
    (FLAGS_CODE32, 0, 0xFFFFF),
    (FLAGS_CODE64, 0, 0xFFFFF),
    (FLAGS_DATA, 0, 0xFFFFF),
    (FLAGS_TSS, 0, 0xFFFFF),
)


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """The 8-byte descriptor for ``flags``/``base``/``limit`` as an integer."""
    return (((base & 0xFF000000) << 32) | ((flags & 0x0000F0FF) << 40)
            | ((limit & 0x000F0000) << 32) | ((base & 0x00FFFFFF) << 16)
            | (limit & 0x0000FFFF))


@dataclass(frozen=True)
class SegmentRegister:
    """A segment register as KVM's struct kvm_segment names its fields."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 - the architectural name of the long-mode bit
    g: int = 0
    avl: int = 0
    unusable: int = 0


def segment_from_gdt_entry(entry: int, index: int) -> SegmentRegister:
    """Decode descriptor ``entry`` at GDT slot ``index`` into segment state."""
    limit = (entry & 0xFFFF) | ((entry >> 32) & 0xF0000)
    granular = (entry >> 55) & 1
    if granular:
        limit = (limit << 12) | 0xFFF  # KVM wants the byte-granular limit
    present = (entry >> 47) & 1
    return SegmentRegister(
        base=((entry >> 16) & 0xFFFFFF) | (((entry >> 56) & 0xFF) << 24),
        limit=limit,
        selector=index * 8,
        type=(entry >> 40) & 0xF,
        present=present,
        dpl=(entry >> 45) & 3,
        db=(entry >> 54) & 1,
        s=(entry >> 44) & 1,
        l=(entry >> 53) & 1,
        g=granular,
        avl=(entry >> 52) & 1,
        unusable=0 if present else 1,
    )


def boot_gdt_entries() -> list[int]:
    """The boot GDT as descriptor integers, slot by slot."""
    return [gdt_entry(*slot) for slot in BOOT_GDT]
