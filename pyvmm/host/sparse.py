"""Writing a buffer to a file with its all-zero pages left as holes (a sparse file),
and finding the data between the holes again.

The pages are checked and written in C, straight from the buffer (guest RAM:
no copy of it is made), by the host helper module (``pyvmm.host._build``).
"""

from __future__ import annotations

import errno
import os

from pyvmm.host._host_cffi import ffi, lib

PAGE = 4096


def write_nonzero_pages(fd: int, buffer: memoryview, offset: int, page: int = PAGE) -> int:
    """Write ``buffer``'s non-zero pages at ``offset`` + their place; return bytes written.

    Zero pages are skipped (the file must read zeros there: new, or truncated to
    size afterwards).  Raises OSError as ``pwrite`` would.
    """
    if not len(buffer):
        return 0
    data = ffi.from_buffer("char[]", buffer)
    written = lib.pyvmm_write_nonzero_pages(fd, data, len(buffer), offset, page)
    if written < 0:
        raise OSError(-written, os.strerror(-written))
    return int(written)


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """(offset, length) of each data extent of ``fd`` in [start, end) (SEEK_DATA/SEEK_HOLE):
    what ``write_nonzero_pages`` wrote there, the rest reading as zeros."""
    extents, position = [], start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after position
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data, hole - data))
        position = hole
    return extents
