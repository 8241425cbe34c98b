"""Page-table walks over hand-built tables: 4 KiB, 2 MiB and 1 GiB pages, LA57, faults."""

from __future__ import annotations

import pytest

from pyvmm.dump.pagewalk import CR4_LA57, PageWalkError, translate
from pyvmm.memory import GuestMemory

P, RW, PS = 1, 2, 0x80


def tables():
    memory = GuestMemory.from_bytes(16 << 20)
    pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
    memory.write_u64(pml4 + 8 * 0x1FF, pdpt | P | RW)       # 0xffffff8000000000
    memory.write_u64(pdpt + 8 * 0, pd | P | RW)
    memory.write_u64(pdpt + 8 * 1, (1 << 30) | P | RW | PS)  # a 1 GiB page
    memory.write_u64(pd + 8 * 0, pt | P | RW)
    memory.write_u64(pd + 8 * 1, 0x600000 | P | RW | PS)     # a 2 MiB page
    memory.write_u64(pt + 8 * 3, 0x9000 | P | RW)            # a 4 KiB page
    memory.write_u64(pt + 8 * 4, 0xA000 | RW)                # not present
    return memory, pml4


BASE = 0xFFFFFF8000000000


@pytest.mark.parametrize("vaddr, paddr, size, levels", [
    (BASE + 0x3123, 0x9123, 4096, ["PML4", "PDPT", "PD", "PT"]),
    (BASE + 0x200000 + 0x12345, 0x612345, 2 << 20, ["PML4", "PDPT", "PD"]),
    (BASE + (1 << 30) + 0x1234567, (1 << 30) + 0x1234567, 1 << 30, ["PML4", "PDPT"]),
])
def test_pages_of_each_size(vaddr: int, paddr: int, size: int, levels: list[str]) -> None:
    memory, cr3 = tables()
    walk = translate(memory.read_u64, cr3, 0, vaddr)
    assert (walk.paddr, walk.page_size) == (paddr, size)
    assert [s.level for s in walk.steps] == levels


def test_not_present_entry_reports_the_steps() -> None:
    memory, cr3 = tables()
    with pytest.raises(PageWalkError, match="PT entry 4 .* not present") as error:
        translate(memory.read_u64, cr3, 0, BASE + 0x4000)
    assert [s.level for s in error.value.steps] == ["PML4", "PDPT", "PD", "PT"]


def test_unmapped_top_level() -> None:
    memory, cr3 = tables()
    with pytest.raises(PageWalkError, match="PML4 entry 0"):
        translate(memory.read_u64, cr3, 0, 0x1000)


@pytest.mark.parametrize("vaddr", [0x0000800000000000, 0x8000000000000000, 1 << 64])
def test_non_canonical(vaddr: int) -> None:
    memory, cr3 = tables()
    with pytest.raises(PageWalkError, match="not a canonical 48-bit"):
        translate(memory.read_u64, cr3, 0, vaddr)


def test_five_level_paging() -> None:
    memory, pml4 = tables()
    pml5 = 0x5000
    memory.write_u64(pml5 + 8 * 0x1FF, pml4 | P | RW)
    vaddr = 0xFFFFFF8000003456  # with LA57: PML5 511, PML4 511, PDPT 0, PD 0, PT 3
    walk = translate(memory.read_u64, pml5, CR4_LA57, vaddr)
    assert [s.level for s in walk.steps] == ["PML5", "PML4", "PDPT", "PD", "PT"]
    assert walk.paddr == 0x9456
    with pytest.raises(PageWalkError, match="57-bit"):
        translate(memory.read_u64, pml5, CR4_LA57, 0x0100000000000000)
