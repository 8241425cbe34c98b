"""Identity-mapping page tables for the 64-bit boot: 4 GiB with 2 MiB pages.

The boot protocol asks for the kernel, zero page and command line to be
identity-mapped; mapping all of the low 4 GiB covers them wherever they are.
"""

from __future__ import annotations

import struct

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import GuestMemory

PTE_PRESENT = 0x1
PTE_WRITABLE = 0x2
PTE_PAGE_SIZE = 0x80  # in a page directory entry: maps a 2 MiB page
PAGE_2M = 2 * layout.MIB
ENTRIES_PER_TABLE = 512


def write_identity_page_tables(memory: GuestMemory) -> int:
    """Write PML4, PDPT and PD_COUNT page directories; return the CR3 value."""
    table = struct.Struct(f"<{ENTRIES_PER_TABLE}Q")
    pml4 = [0] * ENTRIES_PER_TABLE
    pml4[0] = layout.PDPT_START | PTE_PRESENT | PTE_WRITABLE
    memory.write(layout.PML4_START, table.pack(*pml4))

    pdpt = [0] * ENTRIES_PER_TABLE
    for index in range(layout.PD_COUNT):
        pdpt[index] = (layout.PD_START + index * layout.PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE
    memory.write(layout.PDPT_START, table.pack(*pdpt))

    for directory in range(layout.PD_COUNT):
        first = directory * ENTRIES_PER_TABLE
        entries = [((first + i) * PAGE_2M) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE
                   for i in range(ENTRIES_PER_TABLE)]
        memory.write(layout.PD_START + directory * layout.PAGE_SIZE, table.pack(*entries))
    return layout.PML4_START
