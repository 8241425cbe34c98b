"""Shareable guest RAM: one file (on pyvmm's own huge=always tmpfs as root, else a
memfd), MAP_SHARED, that another mapping of the fd sees, in 2 MiB pages where it can."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from pyvmm import memory as memory_module
from pyvmm.memory import GuestMemory, huge_tmpfs_possible


def pmd_mapped_kib(address: int) -> int:
    """ShmemPmdMapped of the mapping at ``address`` in /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as stream:
        lines = stream.readlines()
    for line in lines:
        fields = line.split()
        if "-" in fields[0] and len(fields) > 1 and ":" not in fields[0]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "ShmemPmdMapped:":
            return int(fields[1])
    return 0


def test_shared_ram_is_one_memfd_seen_by_a_second_mapping() -> None:
    memory = GuestMemory.anonymous([(0, 1 << 20), (4 << 20, 1 << 20)], shared=True)
    low, high = memory.regions
    assert low.fd is not None and low.fd == high.fd
    assert (low.fd_offset, high.fd_offset) == (0, 1 << 20)
    assert os.fstat(low.fd).st_size == 2 << 20
    memory.write((4 << 20) + 16, b"from the guest")
    # What a vhost-user backend does with the fd and offset it is sent.
    other = mmap.mmap(high.fd, 1 << 20, flags=mmap.MAP_SHARED, offset=high.fd_offset)
    assert other[16:30] == b"from the guest"
    other[0:4] = b"back"
    assert memory.read(4 << 20, 4) == b"back"
    other.close()
    fd = low.fd
    memory.close()
    try:
        os.fstat(fd)
        raise AssertionError("the memfd outlived GuestMemory.close")
    except OSError:
        pass


def test_private_ram_has_no_fd() -> None:
    memory = GuestMemory.anonymous([(0, 1 << 20)])
    assert memory.regions[0].fd is None
    memory.close()


@pytest.mark.skipif(not huge_tmpfs_possible(), reason="no CAP_SYS_ADMIN for a tmpfs of our own")
def test_shared_ram_is_in_2_mib_pages_whatever_shmem_enabled_says() -> None:
    """This host's shmem_enabled is Debian's ``never``: a memfd would give 4 KiB pages."""
    memory = GuestMemory.anonymous([(0, 8 << 20)], shared=True)
    try:
        (region,) = memory.regions
        assert region.fd is not None
        assert os.readlink(f"/proc/self/fd/{region.fd}") == "/guest-ram (deleted)"
        for offset in range(0, 8 << 20, 4096):
            memory.write(offset, b"\1")
        anchor = ctypes.c_char.from_buffer(region.buffer)
        address = ctypes.addressof(anchor)
        del anchor
        assert pmd_mapped_kib(address) == 8 << 10
    finally:
        memory.close()


def test_without_a_tmpfs_of_its_own_shared_ram_is_a_memfd(monkeypatch) -> None:
    def refused(size: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(memory_module, "huge_tmpfs_file", refused)
    memory = GuestMemory.anonymous([(0, 1 << 20)], shared=True)
    try:
        (region,) = memory.regions
        assert region.fd is not None
        assert os.readlink(f"/proc/self/fd/{region.fd}").startswith("/memfd:pyvmm-guest-ram")
    finally:
        memory.close()
