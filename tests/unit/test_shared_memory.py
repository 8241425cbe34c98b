"""Shareable guest RAM: one memfd, MAP_SHARED, that another mapping of the fd sees."""

from __future__ import annotations

import mmap
import os

from pyvmm.memory import GuestMemory


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
