"""The memory file: sparse (zero pages are holes), exact, and mapped back copy-on-write."""

from __future__ import annotations

import os

import pytest

from pyvmm.host.sparse import data_extents
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.snapshot import MEMORY_FILE, SnapshotError
from pyvmm.snapshot.memfile import map_memory, write_memory

MIB = 1 << 20


def _memory() -> GuestMemory:
    """Two ranges (as below and above the PCI hole), a few pages of data in each."""
    memory = GuestMemory([MemoryRegion(0, 4 * MIB, bytearray(4 * MIB)),
                          MemoryRegion(16 * MIB, 2 * MIB, bytearray(2 * MIB))])
    memory.write(0x1000, b"first page")
    memory.write(0x3FFFFF, b"\x01")              # the last byte of the first range
    memory.write(16 * MIB + 0x5000, b"x" * 9000)  # three pages
    return memory


def test_zero_pages_are_holes_and_the_data_is_exact(tmp_path) -> None:
    memory = _memory()
    layout, written = write_memory(str(tmp_path), memory)
    assert layout == [(0, 4 * MIB, 0), (16 * MIB, 2 * MIB, 4 * MIB)]
    assert written == 5 * 4096  # one + one + three pages: nothing else
    path = tmp_path / MEMORY_FILE
    assert os.stat(path).st_size == 6 * MIB
    assert os.stat(path).st_blocks * 512 <= 8 * 4096  # allocated: the data, not the RAM
    assert os.stat(path).st_mode & 0o777 == 0o600
    data = path.read_bytes()
    assert data[:4 * MIB] == memory.read(0, 4 * MIB)
    assert data[4 * MIB:] == memory.read(16 * MIB, 2 * MIB)


def test_the_data_extents_are_the_pages_written(tmp_path) -> None:
    write_memory(str(tmp_path), _memory())
    fd = os.open(tmp_path / MEMORY_FILE, os.O_RDONLY)
    try:
        assert data_extents(fd, 0, 6 * MIB) == [
            (0x1000, 4096), (0x3FF000, 4096), (4 * MIB + 0x5000, 3 * 4096)]
        assert data_extents(fd, 0x2000, 4 * MIB) == [(0x3FF000, 4096)]  # a range of it
        assert data_extents(fd, 4 * MIB + 0x8000, 6 * MIB) == []        # after the last data
    finally:
        os.close(fd)


def test_mapped_back_privately_writes_stay_in_the_clone(tmp_path) -> None:
    layout, _ = write_memory(str(tmp_path), _memory())
    first, second = map_memory(str(tmp_path), layout), map_memory(str(tmp_path), layout)
    try:
        assert first.read(0x1000, 10) == b"first page"
        assert first.read(16 * MIB + 0x5000, 4) == b"xxxx"
        first.write(0x1000, b"FIRST")
        assert second.read(0x1000, 10) == b"first page"
        assert (tmp_path / MEMORY_FILE).read_bytes()[0x1000:0x100A] == b"first page"
    finally:
        first.close()
        second.close()


def test_a_truncated_memory_file_is_refused(tmp_path) -> None:
    layout, _ = write_memory(str(tmp_path), _memory())
    os.truncate(tmp_path / MEMORY_FILE, 5 * MIB)
    with pytest.raises(SnapshotError, match="truncated"):
        map_memory(str(tmp_path), layout)


def test_a_memory_file_is_never_overwritten(tmp_path) -> None:
    write_memory(str(tmp_path), _memory())
    with pytest.raises(SnapshotError, match="cannot write"):
        write_memory(str(tmp_path), _memory())
