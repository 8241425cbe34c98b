"""What names a disk image in a snapshot: size, mtime and a sampled fingerprint, and the one
line a restore gives for each way an image can change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvmm.snapshot import SnapshotError
from pyvmm.snapshot.disks import SAMPLE_BYTES, SAMPLES, check_images, identity, sample_offsets


def test_the_samples_cover_start_end_and_between() -> None:
    offsets = sample_offsets(1 << 30)
    assert len(offsets) == SAMPLES and offsets[0] == 0
    assert offsets[-1] == (1 << 30) - SAMPLE_BYTES
    assert all(offset % 4096 == 0 for offset in offsets)
    assert sample_offsets(1000) == [0]  # a small image: read whole, once


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(8 << 20))
    return path


def test_an_unchanged_image_passes(disk: Path) -> None:
    check_images("snap", [identity(str(disk))])


def _set_back(disk: Path, saved: dict) -> None:
    os.utime(disk, ns=(saved["mtime_ns"], saved["mtime_ns"]))


@pytest.mark.parametrize("change, words", [
    (lambda f: f.truncate(4 << 20), "changed size since the snapshot"),
    (lambda f: (f.seek(5 << 20), f.write(b"x")), "was modified since the snapshot"),
])
def test_a_changed_image_is_named_in_one_line(disk: Path, change, words: str) -> None:
    saved = identity(str(disk))
    with open(disk, "r+b") as stream:
        change(stream)
    with pytest.raises(SnapshotError, match=words) as error:
        check_images("snap", [saved])
    assert "\n" not in str(error.value) and "--changed-disks" in str(error.value)


def test_a_sampled_block_changed_under_an_old_mtime_is_caught(disk: Path) -> None:
    saved = identity(str(disk))
    with open(disk, "r+b") as stream:
        stream.seek(sample_offsets(8 << 20)[5] + 100)
        stream.write(b"different")
    _set_back(disk, saved)
    with pytest.raises(SnapshotError, match="fingerprint differs"):
        check_images("snap", [saved])


def test_a_missing_image_or_a_damaged_record_is_one_line(disk: Path) -> None:
    saved = identity(str(disk))
    with pytest.raises(SnapshotError, match="a disk's record lacks"):
        check_images("snap", [{"path": str(disk)}])
    disk.unlink()
    with pytest.raises(SnapshotError, match="is gone"):
        check_images("snap", [saved])
