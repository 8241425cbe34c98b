"""Restores made as an earlier pyvmm made them, for benches that compare in one session.

``variant(name)`` is a context manager around a ``Machine.restore``:

* ``branch``: as this pyvmm restores (the spare VM its last clone's close made,
  the memory file in 2 MiB pages where the kernel can, mapped aligned);
* ``main``: without the spare VM and with the memory file mapped as before
  (``MAP_PRIVATE`` wherever the kernel puts it: 4 KiB pages, no collapse);
* ``spare``: the spare VM, the old mapping;  ``huge``: no spare VM, the new mapping;
* ``any``: as ``branch`` with every 2 MiB block that holds any data collapsed
  (``COLLAPSE_MIN_DATA`` one byte), on a copy of the snapshot (``copy_snapshot``: the
  page cache's 2 MiB pages are the file's, so each choice needs a file of its own).

The spare a variant without it finds is closed first (outside the time measured).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from pyvmm.memory import GuestMemory
from pyvmm.snapshot import MEMORY_FILE
from pyvmm.snapshot import memfile
from pyvmm.snapshot import restore as restore_module
from pyvmm.vmm import spare_vm

NAMES = ("branch", "main", "spare", "huge", "any")


def copy_snapshot(snapshot: Path, name: str) -> Path:
    """A copy of the snapshot directory beside it (the memory file still sparse), settled
    (its files older than the per-process cache's 2 s)."""
    copy = snapshot.with_name(f"{snapshot.name}-{name}")
    subprocess.run(["cp", "-a", "--sparse=always", str(snapshot), str(copy)], check=True)
    time.sleep(2.1)
    return copy


def block_histogram(snapshot: Path) -> str:
    """How the memory file's data falls into 2 MiB blocks: blocks holding any, and at least
    64 KiB, 256 KiB, 512 KiB, 1 MiB."""
    from pyvmm.host.sparse import data_extents
    from pyvmm.snapshot.memfile import blocks_to_collapse

    fd = os.open(snapshot / MEMORY_FILE, os.O_RDONLY)
    try:
        length = os.fstat(fd).st_size
        extents = data_extents(fd, 0, length)
    finally:
        os.close(fd)
    counts = [len(blocks_to_collapse(extents, length, least))
              for least in (1, 64 << 10, 256 << 10, 512 << 10, 1 << 20)]
    return (f"2 MiB blocks with data: {counts[0]} of {length >> 21}; with >= 64 KiB "
            f"{counts[1]}, 256 KiB {counts[2]}, 512 KiB {counts[3]}, 1 MiB {counts[4]}")


def mapped_as_before(directory: str, layout: Sequence[Sequence[int]]) -> GuestMemory:
    """The memory file mapped ``MAP_PRIVATE`` where the kernel places it, as before."""
    import mmap

    from pyvmm.memory import MAP_NORESERVE, MemoryRegion

    fd = os.open(os.path.join(directory, MEMORY_FILE), os.O_RDONLY | os.O_CLOEXEC)
    try:
        regions = []
        for base, size, offset in layout:
            mapping = mmap.mmap(fd, int(size), flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=int(offset))
            mapping.madvise(mmap.MADV_DONTFORK)
            regions.append(MemoryRegion(int(base), int(size), mapping))
        return GuestMemory(regions)
    finally:
        os.close(fd)


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name not in NAMES:
        raise ValueError(f"unknown variant {name}")
    if name in ("main", "huge"):
        spare_vm.discard()
    real: Any = getattr(restore_module, "map_memory")
    least = memfile.COLLAPSE_MIN_DATA
    if name in ("main", "spare"):
        setattr(restore_module, "map_memory", mapped_as_before)
    if name == "any":
        memfile.COLLAPSE_MIN_DATA = 1
    try:
        yield
    finally:
        setattr(restore_module, "map_memory", real)
        memfile.COLLAPSE_MIN_DATA = least
