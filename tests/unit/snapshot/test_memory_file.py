"""The memory file: sparse (zero pages are holes), exact, and mapped back copy-on-write."""

from __future__ import annotations

import os
import tempfile

import pytest

from pyvmm.host.sparse import data_extents
from pyvmm.kvm._ffi import address_of
from pyvmm.memory import HUGE_PAGE, GuestMemory, MemoryRegion, map_file_aligned
from pyvmm.snapshot import MEMORY_FILE, SnapshotError
from pyvmm.snapshot.memfile import blocks_to_collapse, collapse_memory, map_memory, write_memory

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


def test_the_blocks_collapsed_are_the_whole_2mib_blocks_with_enough_data() -> None:
    half = MIB // 2
    extents = [(0x1000, 4096),                 # block 0: one page only
               (2 * MIB + 0x1000, half),       # block 1: 512 KiB, in two extents
               (3 * MIB, 4096 * 4),
               (4 * MIB - 4096, 3 * MIB),      # across blocks 1 (4 KiB), 2 (all), 3 (1 MiB - 4 KiB)
               (9 * MIB, MIB)]                 # block 4, but past the file's last whole block
    assert blocks_to_collapse(extents, 9 * MIB + MIB // 2, min_data=half) == [
        2 * MIB, 4 * MIB, 6 * MIB]
    assert blocks_to_collapse(extents, 10 * MIB, min_data=half) == [
        2 * MIB, 4 * MIB, 6 * MIB, 8 * MIB]
    assert blocks_to_collapse(extents, 10 * MIB, min_data=1) == [
        0, 2 * MIB, 4 * MIB, 6 * MIB, 8 * MIB]
    assert blocks_to_collapse([], 10 * MIB, min_data=1) == []


def test_each_range_is_mapped_as_aligned_as_its_file_offset(tmp_path) -> None:
    layout, _ = write_memory(str(tmp_path), _memory())  # the second range at 4 MiB in the file
    fd = os.open(tmp_path / MEMORY_FILE, os.O_RDONLY)
    try:
        for offset, size in ((0, 4 * MIB), (4 * MIB + 0x3000, 8192)):
            mapping, skip = map_file_aligned(fd, size, offset)
            view = memoryview(mapping)[skip:skip + size]
            try:
                assert (address_of(view) - offset) % HUGE_PAGE == 0
                assert bytes(view) == (tmp_path / MEMORY_FILE).read_bytes()[offset:offset + size]
                view[0:1] = b"!"  # private: the file keeps its byte
                assert (tmp_path / MEMORY_FILE).read_bytes()[offset:offset + 1] != b"!"
            finally:
                view.release()
                mapping.close()
    finally:
        os.close(fd)
    memory = map_memory(str(tmp_path), layout)
    try:
        assert all(address_of(region.buffer) % HUGE_PAGE == 0 for region in memory.regions)
    finally:
        memory.close()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm (tmpfs) here")
def test_a_tmpfs_memory_file_is_collapsed_into_2mib_pages_and_reads_the_same() -> None:
    fd, path = tempfile.mkstemp(dir="/dev/shm")
    try:
        os.ftruncate(fd, 8 * MIB)
        data = os.urandom(3 * MIB)
        os.pwrite(fd, data, MIB)           # blocks 0 (1 MiB of data) and 1 (2 MiB)
        os.pwrite(fd, b"y" * 4096, 6 * MIB)  # block 3: too little to collapse
        allocated = os.fstat(fd).st_blocks * 512
        assert collapse_memory(fd, 8 * MIB) == 2   # blocks 0 and 1 asked for
        if os.fstat(fd).st_blocks * 512 == allocated:
            pytest.skip("this kernel can't collapse a tmpfs file (before Linux 6.1)")
        # The holes of a collapsed block are allocated (zeros); block 3 is still one page.
        assert os.fstat(fd).st_blocks * 512 == 4 * MIB + 4096
        assert os.pread(fd, 8 * MIB, 0) == bytes(MIB) + data + bytes(2 * MIB) + b"y" * 4096 \
            + bytes(2 * MIB - 4096)
    finally:
        os.close(fd)
        os.unlink(path)

