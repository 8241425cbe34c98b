"""x86-64 page-table walks (4-level, and 5-level with CR4.LA57) over guest memory.

``translate`` follows a virtual address from CR3 to a physical one and keeps
every step (level, entry address, entry value), so ``inspect mem --virt`` can
show how the address resolved or where it did not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pyvmm.errors import PyvmmError

CR4_LA57 = 1 << 12
PRESENT = 1 << 0
PAGE_SIZE_BIT = 1 << 7  # PS: a 1 GiB (PDPT) or 2 MiB (PD) page
ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
LEVELS_5 = ("PML5", "PML4", "PDPT", "PD", "PT")
#: Page size when the walk ends at this level.
PAGE_SIZES = {"PDPT": 1 << 30, "PD": 2 << 20, "PT": 4 << 10}


class PageWalkError(PyvmmError):
    """The address is not canonical, or a table entry on the way is not present."""

    def __init__(self, message: str, steps: list["WalkStep"]) -> None:
        super().__init__(message)
        self.steps = steps


@dataclass(frozen=True)
class WalkStep:
    level: str
    entry_address: int
    entry: int


@dataclass
class Walk:
    vaddr: int
    paddr: int = 0
    page_size: int = 0
    steps: list[WalkStep] = field(default_factory=list)


def is_canonical(vaddr: int, bits: int) -> bool:
    top = vaddr >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def translate(read_u64: Callable[[int], int], cr3: int, cr4: int, vaddr: int) -> Walk:
    """Walk the tables rooted at ``cr3``; PageWalkError if the address does not map."""
    five_level = bool(cr4 & CR4_LA57)
    bits = 57 if five_level else 48
    walk = Walk(vaddr)
    if not 0 <= vaddr < 1 << 64 or not is_canonical(vaddr, bits):
        raise PageWalkError(f"{vaddr:#x} is not a canonical {bits}-bit address", walk.steps)
    levels = LEVELS_5 if five_level else LEVELS_5[1:]
    table = cr3 & ADDRESS_MASK
    for depth, level in enumerate(levels):
        shift = 12 + 9 * (len(levels) - 1 - depth)
        index = (vaddr >> shift) & 0x1FF
        entry_address = table + 8 * index
        entry = read_u64(entry_address)
        walk.steps.append(WalkStep(level, entry_address, entry))
        if not entry & PRESENT:
            raise PageWalkError(f"{vaddr:#x}: the {level} entry {index} at "
                                f"{entry_address:#x} is not present", walk.steps)
        if level == "PT" or (level in ("PDPT", "PD") and entry & PAGE_SIZE_BIT):
            size = PAGE_SIZES[level]
            frame = entry & ADDRESS_MASK & ~(size - 1)
            walk.paddr = frame | (vaddr & (size - 1))
            walk.page_size = size
            return walk
        table = entry & ADDRESS_MASK
    raise AssertionError("unreachable")  # pragma: no cover
