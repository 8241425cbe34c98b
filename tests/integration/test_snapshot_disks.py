"""Snapshots of machines with disks and NICs: the vblk guest snapshotted at its prompt after
writing its disk; clones on the same image (refused once it changed), on throwaway overlays
(each writes its own, the image never changes), and the back ends a snapshot can't take."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import pyvmm
from pyvmm.errors import PyvmmError
from tests.integration.conftest import image, run_pyvmm

Factory = Callable[..., pyvmm.Machine]
SECTORS_0_7 = 4096


def _vblk(pyvmm_machine: Factory, disk: Path, **options: object) -> pyvmm.Machine:
    vm = pyvmm_machine(kernel=image("tiny/vblk.bzImage"), memory="64M",
                       append="console=ttyS0 blktest=console", **options)
    vm.console.expect("vblk: ready", 30)
    return vm


def _write(vm: pyvmm.Machine, byte: str) -> None:
    vm.console.write("w" + byte)
    vm.console.expect(f"vblk: wrote {byte}\n", 30)


def _read(vm: pyvmm.Machine) -> str:
    vm.console.write("r")
    return vm.console.expect(r"vblk: read (\w+)\n", 30).group(1)


def _quit(vm: pyvmm.Machine) -> int:
    vm.console.write("q")
    return vm.wait(30).status


@pytest.fixture
def disk_snapshot(pyvmm_machine: Factory, tmp_path: Path) -> tuple[Path, Path]:
    """(snapshot, image): the vblk guest wrote 'a' to its 2 MiB raw disk, then was
    snapshotted at its prompt and stopped."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(2 << 20))
    vm = _vblk(pyvmm_machine, disk, drives=[str(disk)])
    _write(vm, "a")
    directory = tmp_path / "snap"
    vm.snapshot(directory, stop=True)
    assert vm.wait(30).status == 0
    return directory, disk


@pytest.fixture
def restored() -> Iterator[Callable[..., pyvmm.Machine]]:
    machines: list[pyvmm.Machine] = []

    def restore(path: Path, **options: object) -> pyvmm.Machine:
        machines.append(pyvmm.Machine.restore(path, timeout=60, **options))
        return machines[-1].start()
    yield restore
    for machine in machines:
        machine.stop()


def test_a_clone_reads_and_writes_the_same_image(disk_snapshot, restored) -> None:
    directory, disk = disk_snapshot
    clone = restored(directory)
    assert _read(clone) == "a"
    _write(clone, "b")
    assert _quit(clone) == 0
    assert disk.read_bytes()[:SECTORS_0_7] == b"b" * SECTORS_0_7


def test_a_changed_image_is_refused_unless_told(disk_snapshot, restored) -> None:
    directory, disk = disk_snapshot
    with open(disk, "r+b") as stream:
        stream.seek(1 << 20)
        stream.write(b"x")
    with pytest.raises(PyvmmError, match="disk.img was modified since the snapshot"):
        pyvmm.Machine.restore(directory)
    refused = run_pyvmm("run", "--restore", str(directory), "--timeout", "30")
    assert refused.status == 2 and refused.stderr.count("\n") == 1
    assert "modified since the snapshot" in refused.stderr and "--changed-disks" in refused.stderr
    clone = restored(directory, changed_disks=True)
    assert _read(clone) == "a" and _quit(clone) == 0


def test_an_image_replaced_with_its_mtime_set_back_is_refused(disk_snapshot) -> None:
    directory, disk = disk_snapshot
    before = os.stat(disk)
    data = bytearray(disk.read_bytes())
    data[:SECTORS_0_7] = b"z" * SECTORS_0_7  # sector 0 is sampled
    disk.write_bytes(bytes(data))
    os.utime(disk, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(PyvmmError, match="fingerprint differs"):
        pyvmm.Machine.restore(directory)


def test_clones_on_overlays_each_write_their_own(disk_snapshot, restored, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    directory, disk = disk_snapshot
    image_before = disk.read_bytes()
    mtime_before = os.stat(disk).st_mtime_ns
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    clones = [restored(directory, snapshot=True) for _ in range(3)]
    for clone, byte in zip(clones, "xyz"):
        assert _read(clone) == "a"
        _write(clone, byte)
    for clone, byte in zip(clones, "xyz"):
        assert _read(clone) == byte
    for clone in clones:
        assert _quit(clone) == 0
        clone.stop()
    assert disk.read_bytes() == image_before and os.stat(disk).st_mtime_ns == mtime_before
    # The overlays were unnamed files in $TMPDIR: nothing is left there.
    assert os.listdir(private_tmp) == []
    again = restored(directory)  # the image never changed: no --changed-disks needed
    assert _read(again) == "a" and _quit(again) == 0


def test_run_restore_with_snapshot_keeps_the_image(disk_snapshot) -> None:
    directory, disk = disk_snapshot
    image_before = disk.read_bytes()
    run = run_pyvmm("run", "--restore", str(directory), "--snapshot", "--timeout", "60",
                    stdin=b"wcrq")
    assert run.status == 0, run.stderr
    assert "vblk: wrote c\nvblk: read c\n" in run.stdout
    assert disk.read_bytes() == image_before


def test_a_clone_on_overlays_cannot_be_snapshotted(disk_snapshot, restored,
                                                   tmp_path: Path) -> None:
    clone = restored(disk_snapshot[0], snapshot=True)
    with pytest.raises(PyvmmError, match="throwaway disk overlays can't be snapshotted"):
        clone.snapshot(tmp_path / "again")
    assert not (tmp_path / "again" / "state.json").exists()
    assert _read(clone) == "a"


def test_a_disk_served_by_the_storage_daemon_is_refused(pyvmm_machine: Factory,
                                                        tmp_path: Path) -> None:
    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip("no qemu-storage-daemon")
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(2 << 20))
    vm = _vblk(pyvmm_machine, disk, drives=[f"path={disk},snapshot=on"])
    with pytest.raises(PyvmmError, match="served by qemu-storage-daemon .* can't be snapshotted"):
        vm.snapshot(tmp_path / "snap")
    assert not (tmp_path / "snap" / "state.json").exists()
    _write(vm, "q")  # it runs on, its disk working
    assert _read(vm) == "q"


def _passt_children() -> list[int]:
    """This process's passt children (passt.avx2 too)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and name.startswith("passt"):
            found.append(int(entry))
    return found


def test_a_nic_reattaches_to_a_fresh_passt(pyvmm_machine: Factory, tmp_path: Path,
                                           restored) -> None:
    if shutil.which("passt") is None:
        pytest.skip("no passt")
    vm = pyvmm_machine(kernel=image("tiny/echo.bzImage"), memory="64M", nets=["user"])
    vm.console.expect("echo ready", 30)
    booted_passt = _passt_children()
    assert len(booted_passt) == 1
    vm.snapshot(tmp_path / "snap", stop=True)
    vm.wait(30)
    vm.stop()
    clones = [restored(tmp_path / "snap") for _ in range(2)]
    passts = _passt_children()
    assert len(passts) == 2 and not set(passts) & set(booted_passt)
    for clone, word in zip(clones, ("one", "two")):
        clone.console.write(word + " ")
        clone.console.expect(word + " ", 30)
        clone.console.write("q")
        assert clone.wait(30).status == 0
        clone.stop()
    deadline = time.monotonic() + 10
    while _passt_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _passt_children() == []
