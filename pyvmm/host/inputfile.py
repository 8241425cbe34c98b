"""Opening the files a user names (kernel, initrd, config, dump, System.map) safely.

A user can name anything: ``/dev/zero`` (reads forever), a FIFO (opening it
waits for a writer), a directory, or a 40 GB sparse file.  Every input file
goes through ``open_input``: opened without waiting (``O_NONBLOCK``), then
it must be a regular file no larger than the caller's limit, so a bad name is
one clear error before anything is read.
"""

from __future__ import annotations

import os
import stat

from pyvmm.errors import PyvmmError

_PIECE = 4 << 20


def _size_text(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{size} bytes"


def open_input(path: str, what: str, error: type[PyvmmError],
               limit: int | None = None, why: str = "") -> int:
    """An fd for reading the regular file ``path``; ``error`` with one line otherwise.

    ``what`` names the file in messages ("kernel", "config file"); ``limit``
    is the largest size accepted, ``why`` the reason given when it is exceeded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} {path!r} not found") from None
    except IsADirectoryError:
        raise error(f"{what} {path!r} is a directory") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} {path!r} is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path!r} is not a regular file")
        if limit is not None and info.st_size > limit:
            raise error(f"{what} {path!r} is {_size_text(info.st_size)}, more than "
                        f"{_size_text(limit)}{' ' + why if why else ''}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_input(path: str, what: str, error: type[PyvmmError], limit: int,
               why: str = "") -> bytes:
    """The whole of the regular file ``path`` (at most ``limit`` bytes), checked as above."""
    fd = open_input(path, what, error, limit, why)
    pieces: list[bytes] = []
    total = 0
    try:
        # The size open_input checked, and a byte more to see the end: one read, into
        # one object, for a file that stays as it was (a 36 MiB initramfs is copied
        # once, not grown piece by piece); a file that grew is read on in pieces,
        # never with ``read(limit)``: that would allocate the limit up front.
        want = min(os.fstat(fd).st_size, limit) + 1
        while total <= limit:
            piece = os.read(fd, min(want, limit + 1 - total))
            if not piece:
                break
            pieces.append(piece)
            total += len(piece)
            want = _PIECE
    except OSError as exc:
        raise error(f"cannot read {what} {path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(pieces)  # a single piece is returned as it is, not copied
    if len(data) > limit:
        raise error(f"{what} {path!r} is more than {_size_text(limit)}"
                    f"{' ' + why if why else ''}")
    return data
