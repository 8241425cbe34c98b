"""The disk images a snapshot names, and whether they are still what the guest saw.

A snapshot keeps no copy of a disk: it names each image pyvmm served and how
to know it again, and a restore opens the same files.  A guest restored onto
an image that changed since would find its page cache and filesystem state
disagreeing with the disk, so a restore checks each image first and refuses
one that changed (``changed_disks=True``, ``--changed-disks``, takes it anyway).

The rule (``identity``): an image is the same when its **size**, its
**mtime** (nanoseconds; not for a block device, whose node's mtime says
nothing of its data) and its **fingerprint** are.  The fingerprint is
SHA-256 over 64 KiB read at 17 places: the start, the end and 15 evenly
spaced between (each at a 4 KiB boundary); about 1 MiB read, whatever the
image's size.  Any write through the filesystem moves the mtime; the
fingerprint catches a file replaced by another of the same size whose mtime
was set back (``cp -p``, ``touch -d``) where the two differ in those blocks.

A process reads a regular file's fingerprint once while the file's inode,
size, mtime and ctime stay as they were (``pyvmm/snapshot/filecache.py``):
a fixture restoring many clones reads 1 MiB once, not once per clone.  Any
write, or an mtime set back, moves the ctime, and the next check reads it again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, Mapping

from pyvmm.snapshot import SnapshotError
from pyvmm.snapshot.filecache import FileCache

#: Bytes read at each sampled place, and how many places.
SAMPLE_BYTES = 64 << 10
SAMPLES = 17
#: Each regular file's fingerprint as last read, by path, while the file is unchanged
#: (``filecache``): the snapshot and every restore of it in a process read it once.
_FINGERPRINTS: FileCache[str] = FileCache()


def sample_offsets(size: int) -> list[int]:
    """Where the fingerprint reads: the start, the end and evenly between, 4 KiB-aligned."""
    last = max(size - SAMPLE_BYTES, 0)
    return sorted({(last * k // (SAMPLES - 1)) & ~0xFFF if k < SAMPLES - 1 else last
                   for k in range(SAMPLES)})


def fingerprint(fd: int, size: int) -> str:
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    for offset in sample_offsets(size):
        digest.update(offset.to_bytes(8, "little"))
        digest.update(os.pread(fd, SAMPLE_BYTES, offset))
    return digest.hexdigest()


def identity(path: str) -> dict[str, Any]:
    """What names ``path``'s content: size, mtime (regular files) and fingerprint."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SnapshotError(f"disk image {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        size = os.lseek(fd, 0, os.SEEK_END)
        regular = stat.S_ISREG(info.st_mode)
        known = _FINGERPRINTS.get(path, info) if regular else None
        if known is None:
            known = fingerprint(fd, size)
            if regular:
                _FINGERPRINTS.put(path, info, known)
        return {"path": path, "size": size,
                "mtime_ns": info.st_mtime_ns if regular else None, "fingerprint": known}
    except OSError as exc:
        raise SnapshotError(f"disk image {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def changes(saved: Mapping[str, Any]) -> str | None:
    """How the image ``saved`` names differs from it now, in words; None if it doesn't."""
    path = saved["path"]
    if not os.path.exists(path):
        return f"disk image {path} is gone"
    now = identity(path)
    if now["size"] != saved["size"]:
        return f"disk image {path} changed size since the snapshot " \
               f"({saved['size']} -> {now['size']} bytes)"
    if now["mtime_ns"] != saved["mtime_ns"]:
        return f"disk image {path} was modified since the snapshot (its mtime moved)"
    if now["fingerprint"] != saved["fingerprint"]:
        return f"disk image {path} is not the snapshot's (its fingerprint differs)"
    return None


def check_images(directory: str, images: list[Mapping[str, Any]]) -> None:
    """SnapshotError (one line) for the first image that changed since the snapshot."""
    for saved in images:
        try:
            what = changes(saved)
        except (KeyError, TypeError) as exc:
            raise SnapshotError(f"{directory}: a disk's record lacks {exc} (damaged, or "
                                "written by another pyvmm)") from None
        if what:
            raise SnapshotError(f"{directory}: {what}; the guest's view of it would be wrong "
                                "(--changed-disks, changed_disks=True, restores anyway)")
