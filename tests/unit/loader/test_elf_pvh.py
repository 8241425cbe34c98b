"""ELF (vmlinux) loading and the PVH start state, over bytes-backed memory."""

from __future__ import annotations

import struct

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot import prepare_boot
from pyvmm.arch.x86_64.pvh import HVM_START_MAGIC, MEMMAP_ENTRY, MODLIST_ENTRY, START_INFO
from pyvmm.errors import LoaderError
from pyvmm.loader.elf import load_elf
from pyvmm.memory import GuestMemory

from .elfs import make_elf, pvh_note

MIB = 1 << 20


def test_segments_land_at_their_physical_addresses_with_bss_zeroed() -> None:
    memory = GuestMemory.from_bytes(32 * MIB)
    memory.fill(0x1000000, 0x3000, 0xAA)
    image = make_elf([(0x1000000, b"text" * 4, 0x3000)], pvh_note(0x1000004))
    kernel = load_elf(memory, image)
    assert kernel.entry_address == 0x1000004
    assert kernel.end_address == 0x1003000
    assert memory.read(0x1000000, 16) == b"text" * 4
    assert memory.read(0x1000010, 0x2FF0) == bytes(0x2FF0)


@pytest.mark.parametrize("image, fragment", [
    (make_elf([(0x100000, b"x", 1)]), "no PVH entry note"),
    (make_elf([(0x100000, b"x", 1)], pvh_note(0x100000), machine=3), "not x86-64"),
    (make_elf([(0x100000, b"x", 1)], pvh_note(0x100000), elf_type=3), "not an executable"),
    (make_elf([(31 * MIB, b"x", 2 * MIB)], pvh_note(31 * MIB)), "does not fit"),
    (make_elf([(0x100000, b"x", 1)], pvh_note(0x900000)), "outside its segments"),
    (make_elf([(0x100000, b"x" * 64, 64)], pvh_note(0x100000))[:-40], "truncated"),
    (b"\x7fELF\x02\x01\x01" + bytes(20), "corrupt"),
], ids=["no-note", "not-x86-64", "not-exec", "outside-ram", "entry-outside", "truncated",
        "corrupt"])
def test_bad_elf_kernels(image: bytes, fragment: str) -> None:
    with pytest.raises(LoaderError, match=fragment):
        load_elf(GuestMemory.from_bytes(32 * MIB), image)


def test_pvh_boot_state_and_start_info() -> None:
    memory = GuestMemory.from_bytes(64 * MIB)
    image = make_elf([(0x1000000, b"\xf4" * 16, 0x1000)], pvh_note(0x1000000))
    initrd = b"initrd-bytes"
    boot = prepare_boot(memory, image, initrd, "console=ttyS0 pvh")
    # 32-bit protected mode, paging off, EBX = hvm_start_info.
    assert boot.sregs.cr0 & 1 and not boot.sregs.cr0 & 0x8000_0000
    assert boot.sregs.efer == 0 and boot.sregs.cs.db == 1 and boot.sregs.cs.l == 0
    assert boot.regs.rip == 0x1000000 and boot.regs.rbx == layout.PVH_START_INFO_START
    info = START_INFO.unpack(memory.read(layout.PVH_START_INFO_START, START_INFO.size))
    magic, version, _flags, nr_modules, modlist, cmdline, _rsdp, memmap, entries, _ = info
    assert (magic, version, nr_modules) == (HVM_START_MAGIC, 1, 1)
    assert memory.read(cmdline, 17) == b"console=ttyS0 pvh" and memory.read_u8(cmdline + 17) == 0
    paddr, size, _, _ = MODLIST_ENTRY.unpack(memory.read(modlist, MODLIST_ENTRY.size))
    assert memory.read(paddr, size) == initrd
    ram = [MEMMAP_ENTRY.unpack(memory.read(memmap + i * 24, 24)) for i in range(entries)]
    assert (0x100000, 63 * MIB, 1, 0) in ram


def test_kernel_kind_is_detected_by_content() -> None:
    from tests.unit.bzimages import make_bzimage

    memory = GuestMemory.from_bytes(64 * MIB)
    boot = prepare_boot(memory, make_bzimage(), None, "x")
    assert boot.sregs.efer & 0x400  # bzImage: long mode
    assert struct.unpack("<I", memory.read(layout.ZERO_PAGE_START + 0x202, 4))[0] \
        == int.from_bytes(b"HdrS", "little")
