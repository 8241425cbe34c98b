"""Debian's kernel reads a qcow2 (over a raw backing file) through qemu-storage-daemon.

Needs hardware KVM (run inside the rig).  The command doesn't load virtio_blk:
command mode carries and loads the driver of each device the machine has.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyvmm.kvm.system import is_pvm_host
from pyvmm.vhost.storage_daemon import DAEMON, DaemonDrive, StorageDaemon

from .conftest import KERNELS
from .guests import retried_in_rig

REPO = Path(__file__).resolve().parents[2]
GUEST_TIMEOUT = 600

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/kvm") or is_pvm_host() or shutil.which(DAEMON) is None,
    reason=f"needs hardware KVM and {DAEMON}: run in the rig")


def make_qcow2_over(base: Path, qcow2: Path) -> None:
    """A qcow2 over ``base``, made by the daemon itself."""
    qcow2.write_bytes(b"")
    daemon = StorageDaemon(shutil.which(DAEMON) or DAEMON)
    try:
        daemon.export(DaemonDrive(str(base), "raw", overlay=str(qcow2)))
    finally:
        daemon.close()


def test_debian_reads_a_qcow2_as_its_virtual_disk(tmp_path) -> None:
    kernel = KERNELS["debian"]
    if not kernel.exists():
        pytest.skip(f"{kernel} is not there")
    base = tmp_path / "base.raw"
    data = os.urandom(4 << 20)
    base.write_bytes(data)
    qcow2 = tmp_path / "disk.qcow2"
    make_qcow2_over(base, qcow2)
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"
    # /dev/vda and /dev/hwrng are there when CMD starts: /init loaded their drivers.
    script = "sha256sum /dev/vda; head -c 4096 /dev/hwrng | wc -c"

    def once() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyvmm", "run", "-k", str(kernel),
                               "-t", str(GUEST_TIMEOUT), "--drive", str(qcow2), "--rng", "--",
                               "sh", "-c", script], capture_output=True, cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)),
                              timeout=GUEST_TIMEOUT + 60)
    result = retried_in_rig(once, lambda r: r.stderr.decode(errors="replace"))
    assert result.returncode == 0, result.stderr
    digest, _, entropy = result.stdout.split()
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    assert entropy == b"4096"  # virtio-rng's bytes, through the guest's hw_random
    assert base.read_bytes() == data


QEMU_IMG = shutil.which("qemu-img")
DISCARD_SIZE = 8 << 20
#: How each back end is asked for: (image format, --drive suffix).
BACKENDS = {"pyvmm-raw": ("raw", ""), "qsd-raw": ("raw", ",backend=qsd"),
            "qsd-qcow2": ("qcow2", "")}


def full_image(path: Path, fmt: str) -> Path:
    """An image at ``path`` (its suffix the format's) whose every block holds data."""
    raw = path.with_suffix(".raw")
    raw.write_bytes(os.urandom(DISCARD_SIZE))
    if fmt == "raw":
        return raw
    qcow2 = path.with_suffix(".qcow2")
    subprocess.run([str(QEMU_IMG), "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    return qcow2


def qcow2_extents(path: Path) -> list[dict]:
    import json

    return json.loads(subprocess.run([str(QEMU_IMG), "map", "--output=json", str(path)],
                                     check=True, capture_output=True).stdout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linux_discards_and_writes_zeroes_through(backend, tmp_path) -> None:
    """Debian's virtio_blk sees discard and write-zeroes limits; blkdiscard frees the
    image's blocks (a raw file's punched out, a qcow2's clusters freed), and
    blkdiscard -z (BLKZEROOUT: write-zeroes requests) reads back zero."""
    kernel = KERNELS["debian"]
    if not kernel.exists():
        pytest.skip(f"{kernel} is not there")
    fmt, suffix = BACKENDS[backend]
    if fmt == "qcow2" and QEMU_IMG is None:
        pytest.skip("no qemu-img (Debian's qemu-utils)")
    trimmed = full_image(tmp_path / "trimmed", fmt)
    zeroed = full_image(tmp_path / "zeroed", fmt)
    script = ("cat /sys/block/vda/queue/discard_max_bytes "
              "/sys/block/vdb/queue/write_zeroes_max_bytes; "
              "blkdiscard /dev/vda && blkdiscard -z /dev/vdb && "
              f"cmp -n {DISCARD_SIZE} /dev/vdb /dev/zero && echo zero")

    def once() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyvmm", "run", "-k", str(kernel),
                               "-t", str(GUEST_TIMEOUT), "--drive", f"path={trimmed}{suffix}",
                               "--drive", f"path={zeroed}{suffix}", "--",
                               "sh", "-c", script], capture_output=True, cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)),
                              timeout=GUEST_TIMEOUT + 60)
    result = retried_in_rig(once, lambda r: r.stderr.decode(errors="replace"))
    assert result.returncode == 0, result.stdout + result.stderr
    discard_max, zeroes_max, said = result.stdout.split()
    assert int(discard_max) > 0 and int(zeroes_max) > 0 and said == b"zero"
    if fmt == "raw":
        assert os.stat(trimmed).st_blocks == 0
        assert zeroed.read_bytes() == bytes(DISCARD_SIZE)
    else:
        assert not any(extent["data"] for extent in qcow2_extents(trimmed))
        assert all(extent["zero"] for extent in qcow2_extents(zeroed))
        for image in (trimmed, zeroed):
            subprocess.run([str(QEMU_IMG), "check", str(image)], check=True,
                           capture_output=True)
