"""Image locking that QEMU understands: OFD byte-range locks on QEMU's lock bytes.

QEMU, qemu-img and qemu-storage-daemon (block/file-posix.c) describe what an
open image is used for with open-file-description ``fcntl`` locks, all
shared (read) locks on single bytes:

* byte ``100 + bit`` for each permission it *holds* (bit 0 consistent read,
  1 write, 2 write-unchanged, 3 resize),
* byte ``200 + bit`` for each permission it *does not share* with others.

Before taking a permission a process checks that nobody holds the "not
shared" byte for it, and before refusing to share one that nobody holds it.
We take the same bytes with the same meaning, so QEMU refuses an image pyvmm
writes and pyvmm refuses one QEMU writes, and two pyvmms keep each other out.
OFD locks belong to the open file, not the process: they are released when
the fd is closed and are not confused by other fds on the same file.
"""

from __future__ import annotations

import errno
import fcntl
import struct

PERM_CONSISTENT_READ = 1 << 0
PERM_WRITE = 1 << 1
PERM_WRITE_UNCHANGED = 1 << 2
PERM_RESIZE = 1 << 3
PERM_BITS = 4
PERM_NAMES = {PERM_CONSISTENT_READ: "consistent read", PERM_WRITE: "write",
              PERM_WRITE_UNCHANGED: "write unchanged", PERM_RESIZE: "resize"}
#: First lock byte for "holds permission bit i", and for "does not share it".
LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200

#: struct flock on x86-64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad).
_FLOCK = struct.Struct("hh4xqqi4x")
_SEEK_SET = 0


class ImageLockError(Exception):
    """Another process holds the image in a way that conflicts with ours."""


def permissions(readonly: bool) -> tuple[int, int]:
    """(what we hold, what we share), as a QEMU virtio-blk device without share-rw."""
    held = PERM_CONSISTENT_READ if readonly else PERM_CONSISTENT_READ | PERM_WRITE
    return held, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED


def _lock_byte(fd: int, offset: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                    _FLOCK.pack(fcntl.F_RDLCK, _SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):  # someone holds it exclusively
            raise ImageLockError("another process holds the image exclusively") from None
        raise


def _held_by_others(fd: int, offset: int) -> bool:
    """Whether another open file holds a lock on byte ``offset`` (F_OFD_GETLK)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                         _FLOCK.pack(fcntl.F_WRLCK, _SEEK_SET, offset, 1, 0))
    return _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK


def lock_image(fd: int, readonly: bool) -> None:
    """Take QEMU's lock bytes on ``fd``; ImageLockError naming the conflict.

    The locks are taken before the check (as QEMU does), so of two processes
    racing for the same image at least one sees the other.  On a conflict the
    caller closes ``fd``, which drops what we took.  Other OSErrors (a
    filesystem without OFD locks) propagate.
    """
    held, shared = permissions(readonly)
    for bit in range(PERM_BITS):
        perm = 1 << bit
        if held & perm:
            _lock_byte(fd, LOCK_PERM_BASE + bit)
        if not shared & perm:
            _lock_byte(fd, LOCK_SHARED_BASE + bit)
    for bit in range(PERM_BITS):
        perm = 1 << bit
        if held & perm and _held_by_others(fd, LOCK_SHARED_BASE + bit):
            raise ImageLockError(f"another process does not share {PERM_NAMES[perm]} access")
        if not shared & perm and _held_by_others(fd, LOCK_PERM_BASE + bit):
            raise ImageLockError(f"another process has {PERM_NAMES[perm]} access")
