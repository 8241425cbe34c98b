"""The memory file: guest RAM written sparse from guest memory, mapped back copy-on-write."""

from __future__ import annotations

import os
from typing import Sequence

from pyvmm.host.sparse import write_nonzero_pages
from pyvmm.memory import GuestMemory
from pyvmm.snapshot import MEMORY_FILE, SnapshotError

#: (guest_base, size, offset in the file) of each RAM range.
Layout = list[tuple[int, int, int]]


def write_memory(directory: str, memory: GuestMemory) -> tuple[Layout, int]:
    """Create ``directory``/memory.raw from ``memory``: its layout and the bytes of data
    written (all-zero pages are holes: the file's allocated size, not its length)."""
    path = os.path.join(directory, MEMORY_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise SnapshotError(f"cannot write {path}: {exc.strerror}") from None
    layout: Layout = []
    written = offset = 0
    try:
        for base, size in memory.ranges():
            written += write_nonzero_pages(fd, memory.view(base, size), offset)
            layout.append((base, size, offset))
            offset += size
        os.ftruncate(fd, offset)  # the zero pages at the end are holes too
    except OSError as exc:
        raise SnapshotError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return layout, written


def map_memory(directory: str, layout: Sequence[Sequence[int]]) -> GuestMemory:
    """Guest RAM mapped ``MAP_PRIVATE`` from ``directory``/memory.raw, checked for length."""
    path = os.path.join(directory, MEMORY_FILE)
    ranges = [(int(base), int(size), int(offset)) for base, size, offset in layout]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror}") from None
    try:
        length = os.fstat(fd).st_size
        needed = max((offset + size for _, size, offset in ranges), default=0)
        if length != needed:
            raise SnapshotError(f"{path}: {length} bytes, the snapshot's RAM needs {needed} "
                                "(truncated or not this snapshot's)")
        return GuestMemory.private_file(fd, ranges)
    finally:
        os.close(fd)
