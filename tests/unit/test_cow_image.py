"""The throwaway copy-on-write overlay: reads come from where each sector lives, writes never
reach the image, and the bookkeeping is the ranges written."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pyvmm.host.cow_image import CowImage, Extents

SECTOR = 512


def test_extents_merge_what_touches_and_cut_runs() -> None:
    extents = Extents()
    for start, end in ((10, 20), (30, 40), (20, 25), (5, 8), (35, 50), (8, 9)):
        extents.add(start, end)
    assert list(zip(extents.starts, extents.ends)) == [(5, 9), (10, 25), (30, 50)]
    assert list(extents.runs(0, 60)) == [(0, 5, False), (5, 9, True), (9, 10, False),
                                         (10, 25, True), (25, 30, False), (30, 50, True),
                                         (50, 60, False)]
    assert list(extents.runs(12, 14)) == [(12, 14, True)]
    extents.add(0, 100)
    assert len(extents) == 1 and list(extents.runs(3, 7)) == [(3, 7, True)]


def test_extents_agree_with_a_set_of_sectors() -> None:
    rng = random.Random(7)
    extents, model = Extents(), set()
    for _ in range(300):
        start = rng.randrange(200)
        end = start + rng.randrange(1, 20)
        extents.add(start, end)
        model |= set(range(start, end))
        assert all(a < b for a, b in zip(extents.ends, extents.starts[1:]))
    for start, end, mine in extents.runs(0, 230):
        assert all((sector in model) == mine for sector in range(start, end))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "base.img"
    path.write_bytes(bytes(range(256)) * (64 * SECTOR // 256))  # 64 sectors
    return path


def _read(disk: CowImage, offset: int, sizes: list[int]) -> bytes:
    buffers = [bytearray(size) for size in sizes]
    done = disk.read_into([memoryview(b) for b in buffers], offset)
    assert done == sum(sizes)
    return b"".join(buffers)


def test_writes_go_to_the_overlay_and_reads_stitch_both(image: Path) -> None:
    base = image.read_bytes()
    disk = CowImage(str(image))
    try:
        assert not disk.readonly and disk.size == len(base)
        assert disk.write_from([memoryview(b"A" * 700), memoryview(b"B" * 324)],
                               2 * SECTOR) == 2 * SECTOR
        disk.write_zeroes(10 * SECTOR, 3 * SECTOR, unmap=False)
        disk.discard(20 * SECTOR, SECTOR)
        expected = bytearray(base)
        expected[2 * SECTOR:4 * SECTOR] = b"A" * 700 + b"B" * 324
        expected[10 * SECTOR:13 * SECTOR] = bytes(3 * SECTOR)
        expected[20 * SECTOR:21 * SECTOR] = bytes(SECTOR)
        # Guest buffers of odd sizes that straddle runs of both.
        assert _read(disk, 0, [100, 1500, 3000, 5000, 6784]) == bytes(expected)[:32 * SECTOR]
        assert _read(disk, 3 * SECTOR, [SECTOR * 8]) == bytes(expected)[3 * SECTOR:11 * SECTOR]
        disk.flush()
    finally:
        disk.close()
        disk.close()
    assert image.read_bytes() == base


def test_the_image_is_shared_and_the_overlay_has_no_name(image: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    os.mkdir(tmp_path / "t")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    first, second = CowImage(str(image)), CowImage(str(image))  # read-only: both lock it
    try:
        first.write_from([memoryview(b"1" * SECTOR)], 0)
        second.write_from([memoryview(b"2" * SECTOR)], 0)
        assert _read(first, 0, [SECTOR]) == b"1" * SECTOR
        assert _read(second, 0, [SECTOR]) == b"2" * SECTOR
        assert os.listdir(tmp_path / "t") == []
        assert os.readlink(f"/proc/self/fd/{first.overlay}").endswith("(deleted)")
    finally:
        first.close()
        second.close()
