"""Host file operations Python's os module lacks: fallocate(2) with mode flags.

From the small host helper module (pyvmm.host._build), not the KVM binding:
a disk image needs no KVM.
"""

from __future__ import annotations

import os

from pyvmm.host._host_cffi import lib

#: Deallocate the range (reads return zeros); the file keeps its size.
PUNCH_HOLE = lib.FALLOC_FL_PUNCH_HOLE | lib.FALLOC_FL_KEEP_SIZE
#: Make the range read as zeros, keeping it allocated (no data is written).
ZERO_RANGE = lib.FALLOC_FL_ZERO_RANGE | lib.FALLOC_FL_KEEP_SIZE


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError (EOPNOTSUPP where the filesystem can't)."""
    ret = lib.pyvmm_fallocate(fd, mode, offset, length)
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
