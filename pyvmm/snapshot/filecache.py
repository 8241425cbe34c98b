"""Work done once per file in a process (a checked state file, a disk's fingerprint), redone
when the file changes.

A pytest suite restores one snapshot many times in one process; reading,
checksumming and decoding its state file and hashing its disk images each
time is most of a restore's own work in a slow (emulated) host.  Each result
is kept under the file's **identity**: device, inode, size, mtime and ctime,
as ``fstat`` gives them.  Any write to a file, any ``utime`` setting its mtime
back and any rename over it changes one of them (ctime can't be set back), so
a changed file is read and checked again, with every refusal that brings.

A file whose ctime is less than ``SETTLE_NS`` old is not cached: timestamps
come from a coarse clock, so a write just after the check could leave them as
they were (git's "racily clean" files); such a file is checked every time
until it has settled.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

#: How old a file's ctime must be before a result for it is kept.
SETTLE_NS = 2_000_000_000
#: Entries kept per cache (the least recently used go first).
CAPACITY = 64

Value = TypeVar("Value")


def file_identity(info: os.stat_result) -> tuple[int, ...] | None:
    """What a cached result for the file ``info`` describes is keyed by; None while it may
    still change unseen (its ctime too recent)."""
    if time.time_ns() - info.st_ctime_ns < SETTLE_NS:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class FileCache(Generic[Value]):
    """Results per (name, file identity), the newest ``CAPACITY`` kept; thread-safe."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, tuple[tuple[int, ...], Value]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: Hashable, info: os.stat_result) -> Value | None:
        """The result kept for ``name`` if its file is still the one ``info`` describes."""
        identity = file_identity(info)
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or identity is None or entry[0] != identity:
                return None
            self._entries.move_to_end(name)
            return entry[1]

    def put(self, name: Hashable, info: os.stat_result, value: Value) -> None:
        """Keep ``value`` for ``name`` as its file is now (not if it changed too recently)."""
        identity = file_identity(info)
        with self._lock:
            self._entries.pop(name, None)
            if identity is None:
                return
            self._entries[name] = (identity, value)
            while len(self._entries) > CAPACITY:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
