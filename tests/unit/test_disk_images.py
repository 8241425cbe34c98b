"""The MBR the Linux boot tests give their disk (tests/disk_images.py)."""

from __future__ import annotations

import struct

import pytest

from tests.disk_images import mbr, partitioned_disk


def test_sector_0_ends_with_the_boot_signature() -> None:
    sector = mbr([(2048, 2048)])
    assert len(sector) == 512
    assert sector[510:512] == b"\x55\xaa"


def test_each_partition_entry_holds_its_type_start_and_size() -> None:
    sector = mbr([(2048, 1024), (4096, 2048)])
    for slot, (start, count) in enumerate([(2048, 1024), (4096, 2048)]):
        entry = sector[446 + 16 * slot:462 + 16 * slot]
        assert entry[0] == 0                 # not bootable
        assert entry[4] == 0x83              # Linux
        assert struct.unpack_from("<II", entry, 8) == (start, count)
    assert sector[446 + 32:510] == bytes(32)   # slots 3 and 4 unused


def test_the_disk_is_its_size_and_zero_past_sector_0() -> None:
    disk = partitioned_disk([(2048, 2048), (4096, 2048)], size=4 << 20)
    assert len(disk) == 4 << 20
    assert disk[:512] == mbr([(2048, 2048), (4096, 2048)])
    assert disk[512:] == bytes(len(disk) - 512)


@pytest.mark.parametrize("partitions", [[(0, 8)], [(2048, 6145)], [(1, 1)] * 5])
def test_a_table_that_does_not_fit_is_refused(partitions: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        partitioned_disk(partitions, size=4 << 20)
