"""A raw disk image file behind a block device: open, lock, scatter-gather I/O.

I/O goes straight between the file and guest memory: ``preadv`` / ``pwritev``
take the guest's buffers (memoryviews into guest RAM) as the iovec, so no
bytes are copied in Python.  The image is locked with ``flock`` (exclusive
for read-write, shared for read-only, as QEMU's image locking behaves) so two
VMMs can't write one image.  A read-only image is never opened for writing.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pyvmm.config import DriveConfig
from pyvmm.errors import DeviceError

SECTOR_SIZE = 512
__all__ = ["DiskImage", "DriveConfig", "SECTOR_SIZE"]
#: O_DIRECT needs buffers aligned to the logical block size; this covers it.
DIRECT_ALIGNMENT = 4096


class DiskImage:
    """An open, locked raw image file."""

    def __init__(self, config: DriveConfig) -> None:
        self.path = config.path
        self.readonly = config.readonly
        self.direct = config.cache == "none"
        flags = (os.O_RDONLY if config.readonly else os.O_RDWR) | os.O_CLOEXEC
        if self.direct:
            flags |= os.O_DIRECT
        try:
            self.fd = os.open(config.path, flags)
        except FileNotFoundError:
            raise DeviceError(f"disk image {config.path!r} not found") from None
        except IsADirectoryError:
            raise DeviceError(f"disk image {config.path!r} is a directory") from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                hint = "" if config.readonly else " (use readonly=on for a read-only image)"
                raise DeviceError(f"disk image {config.path!r} is not writable{hint}") \
                    from None
            if exc.errno == errno.EINVAL and self.direct:
                raise DeviceError(f"disk image {config.path!r}: this filesystem does not "
                                  "support cache=none (O_DIRECT)") from None
            raise DeviceError(f"cannot open disk image {config.path!r}: {exc.strerror}") \
                from None
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if config.readonly else fcntl.LOCK_EX)
                        | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DeviceError(f"disk image {config.path!r} is locked by another process "
                              "(is another VM using it?)") from None
        size = os.fstat(self.fd).st_size
        self.size = size - size % SECTOR_SIZE
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
    # such buffers, so those requests go through one aligned bounce buffer.

    def _bounce_buffer(self, length: int) -> memoryview:
        size = -(-length // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
        if self._bounce is None or len(self._bounce) < size:
            if self._bounce is not None:
                self._bounce.close()
            self._bounce = mmap.mmap(-1, size)  # page-aligned
        return memoryview(self._bounce)[:length]

    def _bounced_read(self, views: list[memoryview], offset: int) -> int:
        total = sum(len(v) for v in views)
        bounce = self._bounce_buffer(total)
        done = os.preadv(self.fd, [bounce], offset)
        position = 0
        for view in views:
            count = max(0, min(len(view), done - position))
            view[:count] = bounce[position:position + count]
            position += len(view)
        bounce.release()
        return done

    def _bounced_write(self, views: list[memoryview], offset: int) -> int:
        total = sum(len(v) for v in views)
        bounce = self._bounce_buffer(total)
        position = 0
        for view in views:
            bounce[position:position + len(view)] = view
            position += len(view)
        done = os.pwritev(self.fd, [bounce], offset)
        bounce.release()
        return done

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
