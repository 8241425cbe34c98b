"""Guest memory: bounds checks and views."""

from __future__ import annotations

import pytest

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory, MemoryRegion


def test_read_write_roundtrip_and_views() -> None:
    memory = GuestMemory.from_bytes(0x10000)
    memory.write_u32(0x100, 0xDEADBEEF)
    assert memory.read(0x100, 4) == b"\xef\xbe\xad\xde"
    view = memory.view(0x200, 4)
    view[:] = b"abcd"
    assert memory.read_u32(0x200) == int.from_bytes(b"abcd", "little")


@pytest.mark.parametrize("gpa,length", [(0x10000, 1), (0xFFFF, 2), (-1, 1), (0x20000, 4)])
def test_outside_ram_is_an_error(gpa: int, length: int) -> None:
    memory = GuestMemory.from_bytes(0x10000)
    with pytest.raises(GuestMemoryError, match="outside guest RAM"):
        memory.read(gpa, length)
    assert not memory.contains(gpa, length)


def test_two_ranges_with_a_hole() -> None:
    memory = GuestMemory([MemoryRegion(0, 0x1000, bytearray(0x1000)),
                          MemoryRegion(0x4000, 0x1000, bytearray(0x1000))])
    memory.write(0x4FFC, b"1234")
    assert memory.read(0x4FFC, 4) == b"1234"
    with pytest.raises(GuestMemoryError):
        memory.read(0x2000, 1)
    with pytest.raises(GuestMemoryError):
        memory.read(0xFFE, 4)  # crosses out of the first range
    assert memory.total_size == 0x2000 and memory.end == 0x5000


def test_anonymous_mmap_backing() -> None:
    memory = GuestMemory.anonymous([(0, 1 << 20)])
    memory.write(0xFFFF0, b"x" * 16)
    assert memory.read(0xFFFF0, 16) == b"x" * 16
    memory.close()


def _vm_flags(address: int) -> set[str]:
    """The VmFlags /proc/self/smaps shows for the mapping holding ``address``."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"{address:#x} is not mapped")


@pytest.mark.parametrize("size, alignment, cffi", [(1 << 20, 2 << 20, False),
                                                   (64 << 20, 2 << 20, True),
                                                   (1 << 30, 1 << 30, False)])
def test_anonymous_ram_is_aligned_for_huge_pages(size: int, alignment: int, cffi: bool) -> None:
    import ctypes

    from pyvmm.kvm._ffi import address_of

    memory = GuestMemory.anonymous([(0, size)], address_of=address_of if cffi else None)
    anchor = ctypes.c_char.from_buffer(memory.regions[0].buffer)
    address = ctypes.addressof(anchor)
    del anchor
    try:
        assert address % alignment == 0
        flags = _vm_flags(address)
        assert "nr" in flags  # MAP_NORESERVE, really set (Python's mmap lacks the name)
        assert "hg" in flags  # madvise(MADV_HUGEPAGE)
        assert "dc" in flags  # MADV_DONTFORK: a forked child copies none of it
        memory.write(size - 4, b"last")
        assert memory.read(size - 4, 4) == b"last"
    finally:
        memory.close()
