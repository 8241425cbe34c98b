"""A raw image under a throwaway copy-on-write overlay, served in-process.

Each machine restored from a snapshot with ``snapshot=True`` (``pyvmm run
--restore DIR --snapshot``) reads the snapshot's image and writes its own
overlay: the image is opened read-only (a shared lock, so any number of
clones use it at once) and the overlay is an unnamed temporary file
(``O_TMPFILE`` in ``$TMPDIR``: nothing to delete, on any exit path, even
SIGKILL) of the image's size.  Which sectors the guest wrote is a sorted
list of ranges (``Extents``), so the bookkeeping grows with what a clone
writes, not with the disk's size.  Requests are whole sectors (virtio-blk's
unit), so a write never has to copy a block from the image first.

Why not qemu-storage-daemon's qcow2 overlays (``snapshot=on`` at boot)?  A
restored guest's RAM is the memory file mapped privately, which a vhost-user
back end can't map (it would see the file, not the clone's writes); and the
disk keeps the device, features and limits the guest's driver set up at
boot.
"""

from __future__ import annotations

import bisect
import errno
import os
import tempfile
from typing import Iterator

from pyvmm.errors import DeviceError
from pyvmm.host.disk_image import SECTOR_SIZE, DiskImage


class Extents:
    """Disjoint, sorted half-open ranges of sectors: the ones the overlay holds."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        """Mark [start, end), merging with the ranges it touches or overlaps."""
        if start >= end:
            return
        first = bisect.bisect_left(self.ends, start)      # first range ending at/after start
        last = bisect.bisect_right(self.starts, end)      # ranges starting at/before end
        if first < last:
            start = min(start, self.starts[first])
            end = max(end, self.ends[last - 1])
        self.starts[first:last] = [start]
        self.ends[first:last] = [end]

    def runs(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """[start, end) cut into (run_start, run_end, in_overlay) pieces, in order."""
        index = bisect.bisect_right(self.ends, start)
        position = start
        while position < end:
            if index < len(self.starts) and self.starts[index] <= position:
                stop = min(end, self.ends[index])
                yield position, stop, True
                index += 1
            else:
                stop = min(end, self.starts[index]) if index < len(self.starts) else end
                yield position, stop, False
            position = stop

    def __len__(self) -> int:
        return len(self.starts)


def _slice(views: list[memoryview], skip: int, length: int) -> list[memoryview]:
    """The bytes [skip, skip + length) of ``views`` taken together, as views."""
    result = []
    for view in views:
        if skip >= len(view):
            skip -= len(view)
            continue
        take = view[skip:skip + length]
        skip = 0
        result.append(take)
        length -= len(take)
        if not length:
            break
    return result


def _temporary_file(size: int) -> int:
    """An unnamed 0600 file of ``size`` bytes (a hole) in $TMPDIR, gone when closed."""
    directory = tempfile.gettempdir()
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise DeviceError(f"cannot make a disk overlay in {directory}: "
                              f"{exc.strerror}") from None
        fd, path = tempfile.mkstemp(prefix="pyvmm-overlay-")  # O_EXCL, 0600
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        raise DeviceError(f"cannot make a disk overlay in {directory}: {exc.strerror}") \
            from None
    return fd


class CowImage(DiskImage):
    """``path`` read-only under a throwaway overlay: the guest reads and writes as on
    a writable disk; the image never changes."""

    #: Which sectors come from the overlay is Python's map: the C loop can't serve it.
    plain_file = False

    def __init__(self, path: str, *, direct: bool = False) -> None:
        super().__init__(path, readonly=True, direct=direct)
        try:
            self.overlay = _temporary_file(self.size)
        except BaseException:
            super().close()
            raise
        self.readonly = False   # the guest's view: writable
        self.written = Extents()

    def _pieces(self, views: list[memoryview], offset: int) -> Iterator[tuple[list[memoryview],
                                                                              int, bool]]:
        length = sum(len(view) for view in views)
        first = offset // SECTOR_SIZE
        last = -(-(offset + length) // SECTOR_SIZE)
        for start, end, mine in self.written.runs(first, last):
            begin = max(start * SECTOR_SIZE, offset)
            stop = min(end * SECTOR_SIZE, offset + length)
            yield _slice(views, begin - offset, stop - begin), begin, mine

    def read_into(self, views: list[memoryview], offset: int) -> int:
        """Each run of sectors from where it lives: the overlay if written, else the image."""
        done = 0
        for piece, position, mine in self._pieces(views, offset):
            wanted = sum(len(view) for view in piece)
            count = os.preadv(self.overlay, piece, position) if mine \
                else super().read_into(piece, position)
            done += count
            if count < wanted:
                break
        return done

    def write_from(self, views: list[memoryview], offset: int) -> int:
        """Into the overlay; the sectors written are the overlay's from now on."""
        count = os.pwritev(self.overlay, views, offset)
        self.written.add(offset // SECTOR_SIZE, (offset + count) // SECTOR_SIZE)
        return count

    def discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length, unmap=True)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """A hole in the overlay, which reads as zeros from now on (the image keeps its data)."""
        from pyvmm.host.fallocate import PUNCH_HOLE, fallocate

        try:
            fallocate(self.overlay, PUNCH_HOLE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            zeros = memoryview(bytes(min(length, 1 << 20)))
            position, left = offset, length
            while left:
                count = min(left, len(zeros))
                os.pwrite(self.overlay, zeros[:count], position)
                position += count
                left -= count
        self.written.add(offset // SECTOR_SIZE, (offset + length) // SECTOR_SIZE)

    def flush(self) -> None:
        """Nothing to keep: the overlay is thrown away with the machine."""

    def close(self) -> None:
        """Close the image and drop the overlay; safe to call twice."""
        if self.overlay >= 0:
            os.close(self.overlay)
            self.overlay = -1
        super().close()
