"""Restores made as an earlier pyvmm made them, for benches that compare in one session.

``variant(name)`` is a context manager around a ``Machine.restore``:

* ``branch``: as this pyvmm restores (the spare VM its last clone's close made,
  the memory file in 2 MiB pages where the kernel can, mapped aligned);
* ``main``: without the spare VM and with the memory file mapped as before
  (``MAP_PRIVATE`` wherever the kernel puts it: 4 KiB pages, no collapse);
* ``spare``: the spare VM, the old mapping;  ``huge``: no spare VM, the new mapping.

The spare a variant without it finds is closed first (outside the time measured).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

from pyvmm.memory import GuestMemory
from pyvmm.snapshot import MEMORY_FILE
from pyvmm.snapshot import restore as restore_module
from pyvmm.vmm import spare_vm

NAMES = ("branch", "main", "spare", "huge")


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
    if name in ("main", "spare"):
        setattr(restore_module, "map_memory", mapped_as_before)
    try:
        yield
    finally:
        setattr(restore_module, "map_memory", real)
