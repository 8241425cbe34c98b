"""A newc cpio writer: the archive format the Linux kernel unpacks as an initramfs.

Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex
fields), the NUL-terminated name padded to 4 bytes, then the data padded to
4 bytes; ``TRAILER!!!`` ends an archive.  The kernel unpacks archives laid
end to end, so a cached base archive and a small per-run one are simply
concatenated (Documentation/driver-api/early-userspace/buffer-format.rst).
"""

from __future__ import annotations

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad(length: int) -> bytes:
    return bytes(-length % 4)


class CpioWriter:
    """Builds one newc archive in memory; entries keep the order they are added in."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        if self._closed:
            raise ValueError("the archive is finished")
        encoded = name.lstrip("/").encode() + b"\0"
        self._ino += 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % value for value in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data,
                        _pad(len(data))]

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, trailer included."""
        if not self._closed:
            self._entry(TRAILER, 0, nlink=1)
            self._closed = True
        return b"".join(self._parts)
