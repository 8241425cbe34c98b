"""What a process keeps of a snapshot between restores (the checked state file, disk
fingerprints), and that a changed file is read and refused again all the same."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyvmm.snapshot import STATE_FILE, SnapshotError, disks, filecache
from pyvmm.snapshot.restore import checked_state
from pyvmm.snapshot.stateformat import write_state

#: The smallest body ``check_state`` takes: no vCPUs, no devices, no disks.
BODY = {"vcpus": [], "vm": {"structs": {}, "missing": {}}, "config": {"drives": []},
        "memory": {"layout": []}, "devices": {}, "virtio": [], "disks": []}


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once; a change waits out the coarse clock's tick."""
    monkeypatch.setattr(filecache, "SETTLE_NS", 0)


def _tick() -> None:
    time.sleep(0.05)  # file times come from a coarse clock: let it move


def _rewrite(path: Path, data: bytes) -> None:
    _tick()
    with open(path, "r+b") as file:  # same inode
        file.write(data)
        file.truncate()


def test_a_settled_state_file_is_read_once(tmp_path: Path, settled: None) -> None:
    write_state(str(tmp_path), BODY)
    first = checked_state(str(tmp_path))
    assert checked_state(str(tmp_path)) is first


def test_a_fresh_file_is_not_kept(tmp_path: Path) -> None:
    write_state(str(tmp_path), BODY)  # its ctime is now: not settled
    assert checked_state(str(tmp_path)) is not checked_state(str(tmp_path))


@pytest.mark.parametrize("damage, words", [
    (lambda data: data.replace(b'"devices": {}', b'"devices": []'), "sha256 does not match"),
    (lambda data: data[:len(data) // 2], "damaged or truncated"),
    (lambda data: data.replace(b'"version": 1', b'"version": 9'), "format version 9"),
])
def test_a_state_file_changed_after_a_restore_is_refused(tmp_path: Path, settled: None,
                                                         damage, words: str) -> None:
    write_state(str(tmp_path), BODY)
    checked_state(str(tmp_path))
    path = tmp_path / STATE_FILE
    _rewrite(path, damage(path.read_bytes()))
    with pytest.raises(SnapshotError, match=words):
        checked_state(str(tmp_path))


def test_a_state_file_replaced_by_another_is_read_again(tmp_path: Path,
                                                        settled: None) -> None:
    write_state(str(tmp_path), BODY)
    first = checked_state(str(tmp_path))
    (tmp_path / STATE_FILE).unlink()
    write_state(str(tmp_path), {**BODY, "devices": {"x": {}}})
    again = checked_state(str(tmp_path))
    assert again is not first and again.body["devices"] == {"x": {}}


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(4 << 20))
    return path


def test_a_settled_disk_is_fingerprinted_once(disk: Path, settled: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = disks.fingerprint

    def counted(fd: int, size: int) -> str:
        reads.append(size)
        return real(fd, size)

    monkeypatch.setattr(disks, "fingerprint", counted)
    saved = disks.identity(str(disk))
    for _ in range(3):
        disks.check_images("snap", [saved])
    assert reads == [4 << 20]


def test_a_disk_changed_under_a_set_back_mtime_is_refused_after_a_cached_check(
        disk: Path, settled: None) -> None:
    saved = disks.identity(str(disk))
    disks.check_images("snap", [saved])  # cached now
    _tick()
    with open(disk, "r+b") as file:  # the first sampled block; the size stays
        file.write(b"not the snapshot's")
    os.utime(disk, ns=(saved["mtime_ns"], saved["mtime_ns"]))
    with pytest.raises(SnapshotError, match="fingerprint differs"):
        disks.check_images("snap", [saved])


def test_the_cache_keeps_the_newest_entries(tmp_path: Path, settled: None) -> None:
    cache: filecache.FileCache[int] = filecache.FileCache()
    info = os.stat(tmp_path)
    for name in range(filecache.CAPACITY + 5):
        cache.put(name, info, name)
    assert cache.get(0, info) is None and cache.get(filecache.CAPACITY + 4, info) == \
        filecache.CAPACITY + 4
