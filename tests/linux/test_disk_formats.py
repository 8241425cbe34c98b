"""Debian's kernel reads a qcow2 (over a raw backing file) through qemu-storage-daemon,
and a whole Debian system boots from a qcow2 under throwaway overlays (snapshot=on).

Needs hardware KVM (run inside the rig).  The command doesn't load virtio_blk:
command mode carries and loads the driver of each device the machine has.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyvmm.kvm.system import is_pvm_host
from pyvmm.vhost.storage_daemon import DAEMON, DaemonDrive, StorageDaemon

from .conftest import KERNELS
from .console_session import LOGIN_PROMPT, ROOT_PROMPT, ConsoleSession
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
    """Debian's virtio_blk sees discard and write-zeroes limits, and data buffers larger
    than a page; blkdiscard frees the image's blocks (a raw file's punched out, a
    qcow2's clusters freed), and blkdiscard -z (BLKZEROOUT: write-zeroes requests)
    reads back zero."""
    kernel = KERNELS["debian"]
    if not kernel.exists():
        pytest.skip(f"{kernel} is not there")
    fmt, suffix = BACKENDS[backend]
    if fmt == "qcow2" and QEMU_IMG is None:
        pytest.skip("no qemu-img (Debian's qemu-utils)")
    trimmed = full_image(tmp_path / "trimmed", fmt)
    zeroed = full_image(tmp_path / "zeroed", fmt)
    script = ("cat /sys/block/vda/queue/discard_max_bytes "
              "/sys/block/vdb/queue/write_zeroes_max_bytes "
              "/sys/block/vda/queue/max_segment_size; "
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
    discard_max, zeroes_max, segment_max, said = result.stdout.split()
    assert int(discard_max) > 0 and int(zeroes_max) > 0 and said == b"zero"
    # Not a page: the daemon's size_max of 0 is not passed on (disks.without_zero_size_max).
    assert int(segment_max) > 4096
    if fmt == "raw":
        assert os.stat(trimmed).st_blocks == 0
        assert zeroed.read_bytes() == bytes(DISCARD_SIZE)
    else:
        assert not any(extent["data"] for extent in qcow2_extents(trimmed))
        assert all(extent["zero"] for extent in qcow2_extents(zeroed))
        for image in (trimmed, zeroed):
            subprocess.run([str(QEMU_IMG), "check", str(image)], check=True,
                           capture_output=True)


#: images/build.sh systemd: Debian bookworm with systemd, udev and dbus, its own kernel
#: and initramfs, root's password empty.  Not built by CI (below).
SYSTEMD = REPO / "images" / "out" / "systemd"
#: The image's own unit powers off at multi-user.target (for bench/systemd_boot.py);
#: masked, the system waits at its login prompt as any installed system does.
SYSTEMD_APPEND = "console=ttyS0 root=/dev/vda rw systemd.mask=pyvmm-poweroff.service"
SYSTEMD_TIMEOUT = 600
#: What root types at the shell (the console echoes it; ``$((1))`` makes the output's
#: markers differ from the echo's): the boot's state, then the marker file of an
#: earlier run (if any writes leaked), then this run's marker, then what systemd
#: warned about.
SYSTEMD_COMMANDS = (
    "echo state:$(systemctl is-active multi-user.target):$(systemctl is-system-running --wait):end",
    "echo seen:$(cat /root/pyvmm-marker 2>/dev/null):end; echo run-{run} > /root/pyvmm-marker; "
    "sync; echo wrote:$(cat /root/pyvmm-marker):end",
    "echo failed-$((1)); systemctl --failed --no-legend --plain; echo journal-$((1)); "
    "SYSTEMD_COLORS=0 journalctl -b -p warning --no-pager -o short-monotonic; "
    "echo end-$((1))",
)


def systemd_image() -> Path:
    """The systemd image's directory, or skip: it is built on request only.

    Not under PYVMM_REQUIRE_IMAGES (CI): its build (mmdebstrap, ~270 s, ~1 GB of
    downloads) and this test's two boots (~3 min in the rig) don't fit CI's budget.
    """
    if not (SYSTEMD / "stamp").exists():
        pytest.skip(f"{SYSTEMD} is not built (bash images/build.sh systemd; not built in CI)")
    return SYSTEMD


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def systemd_pyvmm_command(image: Path, drive: str) -> list[str]:
    return [sys.executable, "-m", "pyvmm", "run", "-k", str(image / "vmlinuz"),
            "-i", str(image / "initrd.img"), "-a", SYSTEMD_APPEND, "-m", "1G",
            "--virtio-announce", "acpi", "--drive", drive,
            "--timeout", str(SYSTEMD_TIMEOUT + 60)]


@dataclass
class ConsoleRun:
    status: int
    found: dict[str, str]   # what each marker enclosed
    console: str
    stderr: str
    seconds: dict[str, float]


def log_in_and_power_off(command: list[str], run: int) -> ConsoleRun:
    """Boot to the login prompt, log in as root, type SYSTEMD_COMMANDS, ``systemctl
    poweroff``; the VMM's status and what the commands printed."""
    seconds: dict[str, float] = {}
    with ConsoleSession(command, cwd=REPO) as console:
        seconds["login prompt"] = console.expect(LOGIN_PROMPT, SYSTEMD_TIMEOUT)
        console.type_line("root")
        for line in SYSTEMD_COMMANDS:  # the first waits for the boot's last jobs
            console.expect(ROOT_PROMPT, 300)
            console.type_line(line.format(run=run))
        console.expect(b"end-1", 300)
        console.expect(ROOT_PROMPT, 60)
        seconds["commands"] = console.elapsed()
        console.type_line("systemctl poweroff")
        status = console.wait(300)
        seconds["exit"] = console.elapsed()
        text = console.text()
        stderr = console.stderr.decode(errors="replace")
    found = {name: match.group(1) for name in ("state", "seen", "wrote")
             if (match := re.search(rf"^{name}:([\w:-]*):end$", text, re.M))}
    for name, start, end in (("failed", "failed-1", "journal-1"),
                             ("journal", "journal-1", "end-1")):
        if (match := re.search(rf"^{start}\n(.*?)^{end}$", text, re.M | re.S)):
            found[name] = match.group(1)
    return ConsoleRun(status, found, text, stderr, seconds)


def test_systemd_boots_twice_from_one_qcow2_under_throwaway_overlays(tmp_path) -> None:
    """QEMU's ``-snapshot`` use: a Debian system (systemd, its initramfs) boots from a qcow2
    with snapshot=on to its login prompt, root logs in, finds multi-user.target active,
    writes a file and powers off (exit 0); a second boot of the same image finds no
    such file; the image is byte for byte what it was and its file system is clean."""
    image = systemd_image()
    base = image / "rootfs.qcow2"
    if QEMU_IMG is None:
        pytest.skip("no qemu-img (Debian's qemu-utils)")
    before = sha256_of(base)
    command = systemd_pyvmm_command(image, f"path={base},snapshot=on")
    runs = [log_in_and_power_off(command, run) for run in (1, 2)]
    for number, run in enumerate(runs, 1):
        print(f"run {number}: {run.seconds}\nfailed units:\n{run.found.get('failed')}"
              f"\nwarnings:\n{run.found.get('journal')}\nconsole:\n{run.console}")
        assert run.status == 0, run.console[-3000:] + run.stderr
        assert run.found.get("state", "").startswith("active:"), run.console[-3000:]
        assert run.found.get("seen") == "", f"run {number} saw another run's writes"
        assert run.found.get("wrote") == f"run-{number}"
        assert "journal" in run.found, run.console[-3000:]
    assert sha256_of(base) == before
    subprocess.run([str(QEMU_IMG), "check", str(base)], check=True, capture_output=True)
    raw = tmp_path / "base.raw"
    subprocess.run([str(QEMU_IMG), "convert", "-O", "raw", str(base), str(raw)], check=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
