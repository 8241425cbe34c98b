"""Crafted disk images for the tests that boot Linux: a disk with an MBR partition table."""

from __future__ import annotations

import struct
from collections.abc import Sequence

SECTOR = 512
#: The partition type byte of a Linux file system.
LINUX_PARTITION = 0x83
#: Sector 0: the four 16-byte primary partition entries, then the boot signature.
PARTITION_TABLE = 446
ENTRY = struct.Struct("<B3sB3sII")   # status, CHS first, type, CHS last, LBA start, sectors
SIGNATURE = b"\x55\xaa"


def mbr(partitions: Sequence[tuple[int, int]]) -> bytes:
    """Sector 0 with one Linux partition per ``(start, count)``, in sectors (LBA only:
    the CHS fields stay zero, as Linux reads the LBA ones)."""
    if len(partitions) > 4:
        raise ValueError(f"an MBR has 4 primary partitions, not {len(partitions)}")
    sector = bytearray(SECTOR)
    for slot, (start, count) in enumerate(partitions):
        ENTRY.pack_into(sector, PARTITION_TABLE + ENTRY.size * slot,
                        0, bytes(3), LINUX_PARTITION, bytes(3), start, count)
    sector[SECTOR - len(SIGNATURE):] = SIGNATURE
    return bytes(sector)


def partitioned_disk(partitions: Sequence[tuple[int, int]], size: int) -> bytes:
    """A ``size``-byte disk of zeros but for its partition table (see :func:`mbr`)."""
    for start, count in partitions:
        if start < 1 or (start + count) * SECTOR > size:
            raise ValueError(f"partition ({start}, {count}) is outside a {size}-byte disk")
    return mbr(partitions) + bytes(size - SECTOR)
