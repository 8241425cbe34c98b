"""The pages a snapshot's clones write, learned from its first clone and copied into the next
before they run.

A clone's RAM is the memory file mapped ``MAP_PRIVATE``: the first guest
write to a page is a nested page fault that KVM can only serve by having the
host copy the page for the clone (a copy-on-write fault of the mapping)
before it maps it.  A clone of a guest idle at its prompt writes the same
hundred-odd pages to answer its first command (kernel stacks, the tty's
buffers, timer and scheduler data).  Copying them all before the clone runs
(``MADV_POPULATE_WRITE``, one call per run of pages, Linux 5.14) took about
3 ms in the rig and made the first answer 6-10 ms sooner (``bench/snapshot_linux.py
--variants no-working-set``): KVM's faults on those pages are then the cheap
kind, the host page already the clone's own.

What a clone wrote is read from ``/proc/self/pagemap`` when it closes, once
per memory file per process: from the first clone that ran, whose pages
none were copied ahead, so the set is what a clone writes, not what was
copied.  At most ``MAX_PAGES`` pages (4 MiB) are kept: a clone grows by
these and by what it writes itself.  The pages hold the memory file's data
either way, so the set is only a hint, kept by the file's device, inode,
size and mtime (no need to wait for its timestamps to settle, as
``filecache`` does): a stale one costs time and memory, never what the
guest reads.

``pagemap`` has a 64-bit entry per virtual page: bit 63 "present", bit 61
"file page or shared anonymous".  In the clone's ``MAP_PRIVATE`` mapping a
present page without bit 61 is the clone's own copy: a page it wrote.  The
scan reads the entries 256 KiB at a time and classifies only each entry's
top byte, which slicing and ``bytes.translate`` pick out in C, so a GiB of
mostly untouched RAM costs milliseconds, not a Python loop over 262,144
entries.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import threading
from collections import OrderedDict
from typing import Callable

from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

PAGE = 4096
#: Bits 56-63 of an entry: "present" (63) and "file page or shared anonymous" (61).
_PRESENT, _FILE_OR_SHARED = 0x80, 0x20
#: Top byte -> 1 for a present page that is the mapping's own (private, anonymous) copy.
_OWN_COPY = bytes(int(b & (_PRESENT | _FILE_OR_SHARED) == _PRESENT) for b in range(256))
#: Entries read per ``pread`` (8 bytes each): 256 KiB at a time, whatever the mapping's size.
_CHUNK_PAGES = 32768
_RUN = re.compile(b"\x01+")


def own_page_runs(address: int, size: int) -> list[tuple[int, int]]:
    """``(first page, pages)`` of each run of pages this process's mapping at ``address``
    (page-aligned, ``size`` bytes) holds as its own copy, counted from ``address``.

    OSError if the pagemap can't be read (no ``/proc``).
    """
    runs: list[tuple[int, int]] = []
    pages = size // PAGE
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for first in range(0, pages, _CHUNK_PAGES):
            count = min(_CHUNK_PAGES, pages - first)
            raw = os.pread(fd, count * 8, (address // PAGE + first) * 8)
            own = raw[7::8].translate(_OWN_COPY)
            for match in _RUN.finditer(own):
                start, end = first + match.start(), first + match.end()
                if runs and runs[-1][0] + runs[-1][1] == start:  # a run across two chunks
                    start = runs.pop()[0]
                runs.append((start, end - start))
    finally:
        os.close(fd)
    return runs


#: Pages copied ahead into a clone, at most (the first runs of what the first clone wrote).
MAX_PAGES = 1024
#: ``madvise`` advice: fault the range in for writing (Linux 5.14; Python's mmap lacks the name).
MADV_POPULATE_WRITE = 23
#: ``(region index, first page, pages)`` of each run of pages.
Runs = tuple[tuple[int, int, int], ...]
#: A memory file's device, inode, size and mtime (ns).
FileKey = tuple[int, int, int, int]
#: Memory files whose clones' writes are kept, at most (the least recently used go first).
MAX_FILES = 16
#: What the first clone of each memory file wrote, by ``FileKey``.
_LEARNED: OrderedDict[FileKey, Runs] = OrderedDict()
_LOCK = threading.Lock()


def learned(key: FileKey) -> Runs:
    """The runs the first clone of memory file ``key`` wrote (none if none closed yet)."""
    with _LOCK:
        runs = _LEARNED.get(key, ())
        if runs:
            _LEARNED.move_to_end(key)
        return runs


def learn(key: FileKey, memory: GuestMemory,
          address_of: Callable[[mmap.mmap], int]) -> None:
    """Keep what the clone with ``memory`` wrote, unless a clone of ``key`` taught it already
    (a clone that never ran wrote nothing and teaches nothing)."""
    with _LOCK:
        if key in _LEARNED:
            return
    try:
        runs = written_runs(memory, address_of)
    except OSError as exc:  # no /proc: never copy ahead for this file
        log.debug("reading a clone's working set: %s", exc)
        runs = ()
    else:
        if not runs:
            return
    with _LOCK:
        _LEARNED[key] = runs
        while len(_LEARNED) > MAX_FILES:
            _LEARNED.popitem(last=False)


def forget() -> None:
    """Drop every set learned (a test's fresh start)."""
    with _LOCK:
        _LEARNED.clear()


def written_runs(memory: GuestMemory, address_of: Callable[[mmap.mmap], int]) -> Runs:
    """The runs of pages of ``memory`` (restored RAM) its clone wrote, first ``MAX_PAGES``."""
    runs: list[tuple[int, int, int]] = []
    left = MAX_PAGES
    for index, region in enumerate(memory.regions):
        assert isinstance(region.buffer, mmap.mmap)
        for first, count in own_page_runs(address_of(region.buffer), region.size):
            count = min(count, left)
            runs.append((index, first, count))
            left -= count
            if not left:
                return tuple(runs)
    return tuple(runs)


def copy_ahead(memory: GuestMemory, runs: Runs) -> int:
    """Give ``memory``'s mapping its own copy of each page in ``runs`` now; the pages copied
    (fewer if the kernel lacks the advice or refuses it: then the guest's writes copy them)."""
    copied = 0
    for index, first, count in runs:
        region = memory.regions[index]
        assert isinstance(region.buffer, mmap.mmap)
        try:
            region.buffer.madvise(MADV_POPULATE_WRITE, first * PAGE, count * PAGE)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: before Linux 5.14, nothing to say
                log.debug("copying a clone's working set ahead: %s", exc)
            break
        copied += count
    return copied
