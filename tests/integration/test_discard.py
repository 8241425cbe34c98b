"""Discard and write-zeroes reach the image, driven by the tiny vblk guest: through pyvmm's
own raw path and through qemu-storage-daemon (raw and qcow2).

A discard over a raw file punches holes (its allocated blocks drop to none); over a
qcow2 the image's clusters are freed (``qemu-img map`` shows no data, ``qemu-img
check`` is clean, the file's blocks drop).  Written zeroes read back zero in the
guest and on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyvmm.exitstatus import ExitStatus
from pyvmm.vhost.storage_daemon import DAEMON

from .conftest import image, run_pyvmm

QEMU_IMG = shutil.which("qemu-img")
SIZE = 8 << 20
SECTORS = SIZE // 512
#: The guest reads written zeroes back, emulated on a kvm_pvm host: a smaller disk.
ZEROED = 2 << 20

#: How each back end is asked for: (image format, --drive suffix).
BACKENDS = {
    "pyvmm-raw": ("raw", ""),
    "qsd-raw": ("raw", ",backend=qsd"),
    "qsd-qcow2": ("qcow2", ""),
}


def needs(backend: str) -> None:
    if backend.startswith("qsd") and shutil.which(DAEMON) is None:
        pytest.skip(f"no {DAEMON}")
    if BACKENDS[backend][0] == "qcow2" and QEMU_IMG is None:
        pytest.skip("no qemu-img (Debian's qemu-utils)")


def full_image(tmp_path: Path, fmt: str, size: int = SIZE) -> Path:
    """An image whose every block holds random data (no holes to begin with)."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(size))
    if fmt == "raw":
        return raw
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run([str(QEMU_IMG), "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def qcow2_map(path: Path) -> list[dict]:
    out = subprocess.run([str(QEMU_IMG), "map", "--output=json", str(path)], check=True,
                         capture_output=True).stdout
    return json.loads(out)


def qcow2_check(path: Path) -> None:
    result = subprocess.run([str(QEMU_IMG), "check", str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def vblk(mode: str, path: Path, suffix: str):
    return run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")), "--drive",
                     f"path={path}{suffix}", "-a", f"console=ttyS0 blktest={mode}",
                     "--timeout", "90")


@pytest.mark.parametrize("backend", BACKENDS)
def test_discard_frees_the_image_blocks(backend, tmp_path) -> None:
    needs(backend)
    fmt, suffix = BACKENDS[backend]
    disk = full_image(tmp_path, fmt)
    assert allocated(disk) >= SIZE
    if fmt == "qcow2":
        assert all(extent["data"] for extent in qcow2_map(disk))
    result = vblk("discard", disk, suffix)
    assert result.status == ExitStatus.OK, result.stdout + result.stderr
    assert f"vblk: discarded {SECTORS} sectors" in result.stdout
    if fmt == "raw":
        assert allocated(disk) == 0  # every block punched out
        assert disk.read_bytes() == bytes(SIZE)
    else:
        extents = qcow2_map(disk)
        assert not any(extent["data"] for extent in extents), extents
        assert sum(extent["length"] for extent in extents) == SIZE
        qcow2_check(disk)
        assert allocated(disk) < SIZE // 8  # the freed clusters went back to the file


@pytest.mark.parametrize("backend", BACKENDS)
def test_written_zeroes_read_back_zero(backend, tmp_path) -> None:
    needs(backend)
    fmt, suffix = BACKENDS[backend]
    disk = full_image(tmp_path, fmt, ZEROED)
    result = vblk("write-zeroes", disk, suffix)
    assert result.status == ExitStatus.OK, result.stdout + result.stderr
    assert f"vblk: zeroed {ZEROED // 512} sectors, read back zero" in result.stdout
    if fmt == "raw":
        assert disk.read_bytes() == bytes(ZEROED)
    else:
        extents = qcow2_map(disk)
        assert all(extent["zero"] and not extent["data"] for extent in extents), extents
        qcow2_check(disk)
