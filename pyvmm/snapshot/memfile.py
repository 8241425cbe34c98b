"""The memory file: guest RAM written sparse from guest memory, mapped back copy-on-write.

A restore maps the file ``MAP_PRIVATE``; each page the guest touches first is a
nested page fault, and in an emulated host (the rig) the clone's first pass
through its kernel and shell took some 450 of them.  Where the file is on a
tmpfs (shmem: ``/tmp`` or ``/dev/shm`` on many hosts, and in the rig), the first
restore in a process asks the kernel to hold the file's data in 2 MiB pages
(``MADV_COLLAPSE``, Linux 6.1, whatever ``shmem_enabled`` says): a clone's first read of
such a page maps all of it, aligned (``GuestMemory.private_file``), and KVM maps it with
one 2 MiB nested page table entry, until the guest writes into it (its copy
is then the 4 KiB page written, and the rest of the 2 MiB page is mapped again
4 KiB at a time).  Only 2 MiB blocks with at least ``COLLAPSE_MIN_DATA`` of
data are collapsed: a 2 MiB page fills the block's holes with zeros in
memory (the file's allocated size grows by them).  Elsewhere (another file
system, an older kernel) it is the file's 4 KiB pages, as before.
"""

from __future__ import annotations

import os
import logging
import mmap
from typing import Sequence

from pyvmm.host.sparse import data_extents, write_nonzero_pages
from pyvmm.memory import HUGE_PAGE, GuestMemory, map_file_aligned
from pyvmm.snapshot import MEMORY_FILE, SnapshotError
from pyvmm.snapshot.filecache import FileCache

log = logging.getLogger(__name__)

#: <sys/mman.h> MADV_COLLAPSE (Linux 6.1): Python 3.11's mmap module lacks the name.
MADV_COLLAPSE = 25
#: A 2 MiB block of the file is collapsed when it holds at least this much data.
COLLAPSE_MIN_DATA = 512 << 10
#: Each memory file whose collapse was asked for in this process (while it is unchanged): the
#: 2 MiB blocks asked for.
_COLLAPSED: FileCache[int] = FileCache()

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
        info = os.fstat(fd)
        if _COLLAPSED.get(path, info) is None:
            _COLLAPSED.put(path, info, collapse_memory(fd, length))
        return GuestMemory.private_file(fd, ranges)
    finally:
        os.close(fd)


def blocks_to_collapse(extents: Sequence[tuple[int, int]], length: int,
                       min_data: int) -> list[int]:
    """The offsets of the whole 2 MiB blocks of a ``length``-byte file holding ``min_data``
    or more of its data ``extents`` ((offset, length) each), in order."""
    blocks: dict[int, int] = {}
    for start, size in extents:
        end = start + size
        while start < end:
            block = start - start % HUGE_PAGE
            step = min(end, block + HUGE_PAGE) - start
            blocks[block] = blocks.get(block, 0) + step
            start += step
    return [block for block, data in sorted(blocks.items())
            if data >= min_data and block + HUGE_PAGE <= length]


def collapse_memory(fd: int, length: int, min_data: int | None = None) -> int:
    """Ask the kernel to hold each 2 MiB block of ``fd`` with ``min_data`` or more of data in
    one 2 MiB page of its page cache (``MADV_COLLAPSE`` over a shared read-only mapping of
    it); the blocks asked for.

    Errors are not told apart: Linux 6.1 collapses a tmpfs file's block and then
    fails the call (EINVAL: it can't map the new page in the asking mapping), a
    second call then succeeds; a kernel or file system that can't collapse fails
    each block at once.  Either way each block is asked once (a few dozen calls)."""
    chosen = blocks_to_collapse(data_extents(fd, 0, length), length,
                                COLLAPSE_MIN_DATA if min_data is None else min_data)
    if not chosen:
        return 0
    try:  # the kernel collapses only what a mapping aligned as the file can map by 2 MiB
        mapping, skip = map_file_aligned(fd, length, 0, shared=True, writable=False)
    except OSError:
        return 0
    try:
        for block in chosen:
            try:
                mapping.madvise(MADV_COLLAPSE, skip + block, HUGE_PAGE)
            except OSError as exc:
                log.debug("MADV_COLLAPSE of %#x: %s", block, exc.strerror)
    finally:
        mapping.close()
    return len(chosen)
