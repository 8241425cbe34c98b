"""Which format a disk image is in, from its first bytes: the one rule pyvmm guesses by.

An image whose header starts with a QEMU format's magic is that format;
anything else is raw.  So a qcow2 file is never opened as raw (a guest
writing to sector 0 of such a "raw" disk would overwrite the qcow2 header and
lose the image), while a raw disk whose data merely starts with the qcow2
magic must be given as ``format=raw``.  QEMU refuses to guess for raw
writes for the same reason.  Only the magic is read: what the format means
is qemu-storage-daemon's business.
"""

from __future__ import annotations

import os

#: (format, offset, magic) as QEMU's block drivers probe them.
MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("qcow2", 0, b"QFI\xfb"),                 # qcow2 v2 and v3 (and the old qcow)
    ("qed", 0, b"QED\0"),
    ("vmdk", 0, b"KDMV"),                     # a sparse extent
    ("vmdk", 0, b"# Disk DescriptorFile"),    # a text descriptor
    ("vhdx", 0, b"vhdxfile"),
    ("vdi", 0x40, b"\x7f\x10\xda\xbe"),       # signature 0xbeda107f, little-endian
    ("vpc", 0, b"conectix"),                  # a dynamic VHD's header
    ("luks", 0, b"LUKS\xba\xbe"),
)
#: The formats ``format=`` takes: raw, and what qemu-storage-daemon serves.
FORMATS = ("raw", "qcow2", "qed", "vmdk", "vhdx", "vdi", "vpc")
#: Bytes of the header we look at.
HEADER_BYTES = 0x44


def format_of_header(header: bytes) -> str:
    """The format whose magic ``header`` starts with, else ``raw``."""
    for name, offset, magic in MAGICS:
        if header[offset:offset + len(magic)] == magic:
            return name
    return "raw"


def detect_format(path: str) -> str:
    """The format of the image at ``path`` by its magic; OSError if it can't be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return format_of_header(os.pread(fd, HEADER_BYTES, 0))
    finally:
        os.close(fd)
