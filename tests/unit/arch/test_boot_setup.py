"""Zero page, e820, initrd placement, command line, page tables, GDT, CPUID, regs."""

from __future__ import annotations

import struct

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot import prepare_boot
from pyvmm.arch.x86_64.boot_params import E820Entry, build_zero_page, e820_map
from pyvmm.arch.x86_64.cpuid import CpuidEntry, adjust_cpuid
from pyvmm.arch.x86_64.gdt import gdt_entry, segment_from_gdt_entry
from pyvmm.arch.x86_64.paging import write_identity_page_tables
from pyvmm.arch.x86_64.regs import boot_sregs_64
from pyvmm.errors import LoaderError
from pyvmm.loader.bzimage import parse_setup_header
from pyvmm.loader.cmdline import write_cmdline
from pyvmm.loader.initrd import place_initrd
from pyvmm.memory import GuestMemory
from tests.unit.bzimages import make_bzimage

MIB = 1 << 20
GIB = 1 << 30


def test_e820_for_512m() -> None:
    assert e820_map(layout.ram_ranges(512 * MIB)) == [
        E820Entry(0, 0x9FC00, 1), E820Entry(0x9FC00, 0x60400, 2),
        E820Entry(0x100000, 512 * MIB - 0x100000, 1)]


def test_e820_with_mmio_hole_for_5g() -> None:
    entries = e820_map(layout.ram_ranges(5 * GIB))
    assert entries[2] == E820Entry(0x100000, layout.MMIO_GAP_START - 0x100000, 1)
    assert entries[3] == E820Entry(1 << 32, 5 * GIB - layout.MMIO_GAP_START, 1)


def test_zero_page_fields() -> None:
    header = parse_setup_header(make_bzimage())
    page = build_zero_page(header, 0x20000, (0x1F000000, 12345),
                           e820_map([(0, 512 * MIB)]), acpi_rsdp_addr=0xE0000)
    assert len(page) == 4096
    assert page[0x202:0x206] == b"HdrS"
    assert page[0x210] == 0xFF
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x20000
    assert struct.unpack_from("<II", page, 0x218) == (0x1F000000, 12345)
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xE0000
    assert page[0x1E8] == 3
    assert struct.unpack_from("<QQI", page, 0x2D0 + 20) == (0x9FC00, 0x60400, 2)


def test_initrd_goes_high_and_aligned() -> None:
    memory = GuestMemory.from_bytes(256 * MIB)
    address = place_initrd(memory, 10_000, kernel_end=32 * MIB, initrd_addr_max=0x7FFFFFFF)
    assert address % 4096 == 0
    assert address + 10_000 <= 256 * MIB < address + 10_000 + 4096


def test_initrd_respects_initrd_addr_max() -> None:
    memory = GuestMemory.from_bytes(256 * MIB)
    address = place_initrd(memory, 4096, kernel_end=32 * MIB, initrd_addr_max=64 * MIB - 1)
    assert address == 64 * MIB - 4096


def test_initrd_too_big() -> None:
    with pytest.raises(LoaderError, match="does not fit"):
        place_initrd(GuestMemory.from_bytes(64 * MIB), 40 * MIB, kernel_end=32 * MIB,
                     initrd_addr_max=0x7FFFFFFF)


def test_cmdline_written_and_limited() -> None:
    memory = GuestMemory.from_bytes(4 * MIB)
    assert write_cmdline(memory, "console=ttyS0", 2047, layout.CMDLINE_START,
                         layout.CMDLINE_MAX_SIZE) == (layout.CMDLINE_START, 13)
    assert memory.read(layout.CMDLINE_START, 14) == b"console=ttyS0\0"
    with pytest.raises(LoaderError, match="at most 10"):
        write_cmdline(memory, "x" * 11, 10, layout.CMDLINE_START, layout.CMDLINE_MAX_SIZE)
    with pytest.raises(LoaderError, match="NUL"):
        write_cmdline(memory, "a\0b", 100, layout.CMDLINE_START, layout.CMDLINE_MAX_SIZE)


def test_identity_page_tables() -> None:
    memory = GuestMemory.from_bytes(2 * MIB)
    cr3 = write_identity_page_tables(memory)
    assert cr3 == layout.PML4_START
    assert memory.read_u64(layout.PML4_START) == layout.PDPT_START | 3
    assert memory.read_u64(layout.PDPT_START + 8) == (layout.PD_START + 4096) | 3
    assert memory.read_u64(layout.PD_START) == 0x83
    assert memory.read_u64(layout.PD_START + 8) == 0x200000 | 0x83
    last = layout.PD_START + 4 * 4096 - 8
    assert memory.read_u64(last) == ((4 * GIB) - 0x200000) | 0x83


def test_gdt_entries_and_segments() -> None:
    assert gdt_entry(0xA09B, 0, 0xFFFFF) == 0x00AF9B000000FFFF
    assert gdt_entry(0xC093, 0, 0xFFFFF) == 0x00CF93000000FFFF
    code = segment_from_gdt_entry(gdt_entry(0xA09B, 0, 0xFFFFF), 2)
    assert (code.selector, code.l, code.db, code.type, code.present, code.limit) == (
        0x10, 1, 0, 0xB, 1, 0xFFFFFFFF)
    sregs = boot_sregs_64(0x9000)
    assert sregs.ds.selector == 0x18 and sregs.tr.selector == 0x20
    assert sregs.cr0 & 0x80000001 == 0x80000001 and sregs.cr4 & 0x20
    assert sregs.efer == 0x500


def leaf(function: int, index: int = 0, **regs: int) -> CpuidEntry:
    values = {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0, **regs}
    return CpuidEntry(function, index, 0, **values)


def test_cpuid_apic_ids_and_topology() -> None:
    table = [leaf(1, ebx=0x0800, ecx=(1 << 13) | (1 << 26)), leaf(0xB, 0), leaf(0xB, 1)]
    for vcpu in range(4):
        adjusted = {(e.function, e.index): e for e in adjust_cpuid(table, vcpu, 4, "host")}
        assert adjusted[(1, 0)].ebx >> 24 == vcpu
        assert (adjusted[(1, 0)].ebx >> 16) & 0xFF == 4
        assert adjusted[(1, 0)].ebx & 0xFFFF == 0x0800
        assert adjusted[(1, 0)].ecx >> 31 == 1
        assert adjusted[(1, 0)].edx & (1 << 28)
        assert adjusted[(1, 0)].ecx & (1 << 13)  # host keeps CX16
        assert adjusted[(0xB, 1)].edx == vcpu and adjusted[(0xB, 1)].ebx == 4


def test_cpuid_offers_tsc_deadline_only_when_kvm_emulates_it() -> None:
    table = [leaf(1, ecx=1)]
    offered = adjust_cpuid(table, 0, 1, "host", tsc_deadline=True)[0]
    assert offered.ecx & (1 << 24) and offered.ecx & 1
    assert not adjust_cpuid(table, 0, 1, "host")[0].ecx & (1 << 24)


def test_cpuid_compat_hides_what_emulation_cannot_run() -> None:
    table = [leaf(1, ecx=(1 << 13) | (1 << 26) | (1 << 28) | 1), leaf(7, ebx=1 << 5),
             leaf(0xD, eax=7, ebx=0x240)]
    adjusted = {(e.function, e.index): e for e in adjust_cpuid(table, 0, 1, "compat")}
    assert adjusted[(1, 0)].ecx & ((1 << 13) | (1 << 26) | (1 << 28)) == 0
    assert adjusted[(1, 0)].ecx & 1  # SSE3 stays
    assert adjusted[(7, 0)].ebx == 0
    assert adjusted[(0xD, 0)].eax == 0


def test_prepare_boot_end_to_end() -> None:
    memory = GuestMemory.from_bytes(64 * MIB)
    state = prepare_boot(memory, make_bzimage(), b"INITRD", "console=ttyS0 quiet")
    assert state.regs.rip == 0x1000200 and state.regs.rsi == layout.ZERO_PAGE_START
    zero_page = memory.read(layout.ZERO_PAGE_START, 4096)
    address, size = struct.unpack_from("<II", zero_page, 0x218)
    assert size == 6 and memory.read(address, 6) == b"INITRD"
    assert memory.read(layout.CMDLINE_START, 19) == b"console=ttyS0 quiet"
