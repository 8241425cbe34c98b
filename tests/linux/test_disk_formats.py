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
import warnings
from pathlib import Path

import pytest

from pyvmm.errors import DeviceError
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
    """A qcow2 over ``base``, made by the daemon itself.

    In the rig (QEMU's TCG, the host's files over 9p) the daemon's first start in a
    fresh session once took over 30 s to answer its monitor (CI, cold caches): there,
    and only there, that is retried once, with a warning."""
    for attempt in (1, 2):
        qcow2.write_bytes(b"")
        try:
            daemon = StorageDaemon(shutil.which(DAEMON) or DAEMON)
        except DeviceError as exc:
            if os.environ.get("RIG") != "1" or attempt == 2:
                raise
            warnings.warn(f"rig: {DAEMON} was slow to start; retried once: {exc}")
            continue
        try:
            daemon.export(DaemonDrive(str(base), "raw", overlay=str(qcow2)))
        finally:
            daemon.close()
        return


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
