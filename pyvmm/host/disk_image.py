"""A raw disk image file behind a block device: open, lock, scatter-gather I/O.

I/O goes straight between the file and guest memory: ``preadv`` / ``pwritev``
take the guest's buffers (memoryviews into guest RAM) as the iovec, so no
bytes are copied in Python.  The image is locked with QEMU's own OFD lock
bytes (``image_lock``), so neither QEMU nor a second pyvmm can write an image
we use.  A read-only image is never opened for writing.  Only regular files
and block devices are images: a FIFO or a character device is refused.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat

from pyvmm.host.fallocate import PUNCH_HOLE, ZERO_RANGE, fallocate
from pyvmm.host.image_lock import ImageLockError, lock_image
from pyvmm.errors import DeviceError

log = logging.getLogger(__name__)

SECTOR_SIZE = 512
__all__ = ["DiskImage", "SECTOR_SIZE"]
#: O_DIRECT needs buffers aligned to the logical block size; this covers it.
DIRECT_ALIGNMENT = 4096
#: The cache=none bounce buffer: unaligned requests are copied this much at a time.
BOUNCE_SIZE = 1 << 20


def _open_image(path: str, readonly: bool, direct: bool) -> int:
    """Open the image as the drive asks; DeviceError with one line if we can't.

    O_NONBLOCK keeps the open from waiting on a FIFO (refused just after);
    it means nothing for files and block devices and is cleared again.
    """
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK
    if direct:
        flags |= os.O_DIRECT
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DeviceError(f"disk image {path!r} not found") from None
    except IsADirectoryError:
        raise DeviceError(f"disk image {path!r} is a directory") from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "" if readonly else " (use readonly=on for a read-only image)"
            raise DeviceError(f"disk image {path!r} is not writable{hint}") from None
        if exc.errno == errno.EINVAL and direct:
            raise DeviceError(f"disk image {path!r}: this filesystem does not "
                              "support cache=none (O_DIRECT)") from None
        raise DeviceError(f"cannot open disk image {path!r}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise DeviceError(f"disk image {path!r} is not a regular file or a block device")
    os.set_blocking(fd, True)
    return fd


def _usable_size(fd: int) -> int:
    """Bytes the guest sees: whole sectors of the file, or of the block device."""
    # lseek(SEEK_END) is a block device's size (BLKGETSIZE64) and a file's st_size.
    size = os.lseek(fd, 0, os.SEEK_END)
    return size - size % SECTOR_SIZE


class DiskImage:
    """An open, locked raw image: a regular file or a block device.

    ``direct`` opens it with O_DIRECT (the page cache bypassed: ``cache=none``).
    """

    #: Its bytes are the file's, at the same offsets: the C request loop
    #: (``pyvmm/host/_disk_build.py``) reads and writes the fd itself.
    plain_file = True

    def __init__(self, path: str, *, readonly: bool = False, direct: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.direct = direct
        self.fd = _open_image(path, readonly, direct)
        try:
            self.size = _usable_size(self.fd)
            try:
                lock_image(self.fd, readonly)
            except ImageLockError as exc:
                raise DeviceError(f"disk image {path!r} is locked by another process "
                                  f"(is another VM using it? {exc})") from None
            except OSError as exc:
                # As QEMU's locking=auto: a filesystem without OFD locks still works.
                log.warning("disk image %r: cannot lock it (%s); another VM could write "
                            "it too", path, exc.strerror)
        except BaseException:
            os.close(self.fd)
            raise
        self._bounce: mmap.mmap | None = None

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    def read_into(self, views: list[memoryview], offset: int) -> int:
        """Fill ``views`` from the image at ``offset``; return bytes read."""
        try:
            return os.preadv(self.fd, views, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
        return self._bounced_read(views, offset)

    def write_from(self, views: list[memoryview], offset: int) -> int:
        """Write ``views`` to the image at ``offset``; return bytes written."""
        try:
            return os.pwritev(self.fd, views, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
        return self._bounced_write(views, offset)

    # O_DIRECT refuses buffers that are not block-aligned; guests may hand us
    # such buffers, so those requests go through one aligned bounce buffer of
    # at most BOUNCE_SIZE, a piece at a time: its size never follows the guest's.

    def _bounce_buffer(self) -> memoryview:
        if self._bounce is None:
            self._bounce = mmap.mmap(-1, BOUNCE_SIZE)  # page-aligned
        return memoryview(self._bounce)

    def _bounced_read(self, views: list[memoryview], offset: int) -> int:
        bounce = self._bounce_buffer()
        done = 0
        try:
            for piece in _pieces(views, len(bounce)):
                length = sum(len(v) for v in piece)
                # The disk's length is sector-aligned; O_DIRECT wants whole blocks.
                count = os.preadv(self.fd, [bounce[:_align_up(length)]], offset + done)
                count = min(count, length)
                position = 0
                for view in piece:
                    take = max(0, min(len(view), count - position))
                    view[:take] = bounce[position:position + take]
                    position += len(view)
                done += count
                if count < length:
                    break
        finally:
            bounce.release()
        return done

    def _bounced_write(self, views: list[memoryview], offset: int) -> int:
        bounce = self._bounce_buffer()
        done = 0
        try:
            for piece in _pieces(views, len(bounce)):
                position = 0
                for view in piece:
                    bounce[position:position + len(view)] = view
                    position += len(view)
                count = os.pwritev(self.fd, [bounce[:position]], offset + done)
                done += count
                if count < position:
                    break
        finally:
            bounce.release()
        return done

    def discard(self, offset: int, length: int) -> None:
        """The guest no longer needs these bytes: punch them out where the filesystem can."""
        try:
            fallocate(self.fd, PUNCH_HOLE, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise  # discard is a hint: a filesystem that can't is not an error

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """Zero ``length`` bytes at ``offset``: a hole (``unmap``) or zeroed blocks, else
        zeros written a MiB at a time."""
        try:
            fallocate(self.fd, PUNCH_HOLE if unmap else ZERO_RANGE, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        zeros = memoryview(bytes(min(length, 1 << 20)))
        while length:
            count = min(length, len(zeros))
            self.write_from([zeros[:count]], offset)
            offset += count
            length -= count

    def flush(self) -> None:
        """Make every completed write durable (the guest's flush)."""
        if not self.readonly:
            os.fdatasync(self.fd)

    def close(self) -> None:
        """Flush, unlock and close; safe to call twice."""
        if self.fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self.fd)  # releases the flock
                self.fd = -1
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None


def _align_up(length: int) -> int:
    return -(-length // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT


def _pieces(views: list[memoryview], limit: int):
    """Split ``views`` into consecutive groups of at most ``limit`` bytes each."""
    piece: list[memoryview] = []
    room = limit
    for view in views:
        while len(view):
            take = min(len(view), room)
            piece.append(view[:take])
            view = view[take:]
            room -= take
            if room == 0:
                yield piece
                piece, room = [], limit
    if piece:
        yield piece
