"""Writing a buffer to a file with its all-zero pages left as holes (a sparse file).

The pages are checked and written in C, straight from the buffer (guest RAM:
no copy of it is made), by the host helper module (``pyvmm.host._build``).
"""

from __future__ import annotations

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
