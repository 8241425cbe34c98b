"""The zero page (struct boot_params) and its e820 memory map.

Offsets are those of Documentation/arch/x86/zero-page.rst; the setup header
part is copied from the kernel image and then filled in as a boot loader does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from pyvmm.arch.x86_64 import layout
from pyvmm.loader.bzimage import OFF_SETUP_SECTS, SetupHeader

ZERO_PAGE_SIZE = 4096
OFF_ACPI_RSDP_ADDR = 0x070
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_TYPE_OF_LOADER = 0x210
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_CMD_LINE_PTR = 0x228
OFF_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128
E820_ENTRY = struct.Struct("<QQI")

#: type_of_loader 0xff: "undefined" boot loader, as the protocol asks of new ones.
LOADER_TYPE_UNDEFINED = 0xFF

E820_RAM = 1
E820_RESERVED = 2


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int


def e820_map(ram_ranges: Iterable[tuple[int, int]]) -> list[E820Entry]:
    """RAM below the EBDA, the BIOS area reserved, RAM from 1 MiB in each range."""
    entries = []
    for base, size in ram_ranges:
        end = base + size
        if base == 0:
            entries.append(E820Entry(0, layout.EBDA_START, E820_RAM))
            entries.append(E820Entry(layout.EBDA_START,
                                     layout.HIMEM_START - layout.EBDA_START, E820_RESERVED))
            base = layout.HIMEM_START
        if end > base:
            entries.append(E820Entry(base, end - base, E820_RAM))
    return entries


def build_zero_page(header: SetupHeader, cmdline_addr: int,
                    initrd: tuple[int, int] | None, e820: list[E820Entry],
                    acpi_rsdp_addr: int = 0) -> bytes:
    """The 4 KiB boot_params for a 64-bit boot."""
    if len(e820) > E820_MAX_ENTRIES:
        raise ValueError("too many e820 entries")
    page = bytearray(ZERO_PAGE_SIZE)
    page[OFF_SETUP_SECTS:OFF_SETUP_SECTS + len(header.raw)] = header.raw
    page[OFF_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    struct.pack_into("<I", page, OFF_CMD_LINE_PTR, cmdline_addr & 0xFFFFFFFF)
    struct.pack_into("<I", page, OFF_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd is not None:
        address, size = initrd
        struct.pack_into("<II", page, OFF_RAMDISK_IMAGE, address & 0xFFFFFFFF,
                         size & 0xFFFFFFFF)
        struct.pack_into("<II", page, OFF_EXT_RAMDISK_IMAGE, address >> 32, size >> 32)
    struct.pack_into("<Q", page, OFF_ACPI_RSDP_ADDR, acpi_rsdp_addr)
    page[OFF_E820_ENTRIES] = len(e820)
    for index, entry in enumerate(e820):
        E820_ENTRY.pack_into(page, OFF_E820_TABLE + index * E820_ENTRY.size,
                             entry.addr, entry.size, entry.type)
    return bytes(page)
