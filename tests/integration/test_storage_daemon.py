"""Disks through qemu-storage-daemon, driven by the tiny vblk guest: qcow2 with a backing
file, throwaway and kept overlays, QEMU's locks both ways, the daemon's death, no daemon."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pyvmm.exitstatus import ExitStatus
from pyvmm.vhost.storage_daemon import DAEMON, DaemonDrive, StorageDaemon

from .conftest import REPO, image, pyvmm_command, run_pyvmm

pytestmark = pytest.mark.skipif(shutil.which(DAEMON) is None, reason=f"no {DAEMON}")
QEMU = shutil.which("qemu-system-x86_64")
SECTORS = 2048  # 1 MiB: vblk's write-pattern covers it all


def pattern() -> bytes:
    return bytes((s * 7 + i) & 0xFF for s in range(SECTORS) for i in range(512))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_qcow2_over(base: Path, path: Path) -> None:
    """A qcow2 at ``path`` whose backing file is the raw ``base``, made by QEMU itself."""
    daemon = StorageDaemon(shutil.which(DAEMON) or DAEMON)
    try:
        path.write_bytes(b"")
        daemon.export(DaemonDrive(str(base), "raw", overlay=str(path)))
    finally:
        daemon.close()


def vblk(mode: str, *drive: str, env: dict | None = None, options: tuple[str, ...] = ()):
    args = ("run", "-k", str(image("tiny/vblk.bzImage")), "-a", f"console=ttyS0 blktest={mode}",
            "--timeout", "90", *(a for d in drive for a in ("--drive", d)), *options)
    if env is None:
        return run_pyvmm(*args)
    proc = subprocess.run(pyvmm_command(*args), capture_output=True, timeout=120, cwd=REPO,
                          env=env, stdin=subprocess.DEVNULL)
    return proc


@pytest.fixture
def base(tmp_path) -> Path:
    path = tmp_path / "base.raw"
    path.write_bytes(os.urandom(SECTORS * 512))
    return path


@pytest.fixture(autouse=True)
def private_tmpdir(tmp_path, monkeypatch) -> Path:
    """Each test's own TMPDIR (for pyvmm and the daemons this process starts), so that
    ``leftovers`` sees only what this test made, not another process's daemons in /tmp."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


def leftovers() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("pyvmm-qsd-")}


def test_a_qcow2_with_a_backing_file_is_read_and_written(base, tmp_path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    make_qcow2_over(base, qcow2)
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"
    base_bytes = base.read_bytes()
    before = leftovers()
    read = vblk("sha256", str(qcow2))  # no format=: the magic says qcow2
    assert read.status == ExitStatus.OK, read.stderr
    assert f"vblk: sha256 {sha(base_bytes)}" in read.stdout  # the backing file's data
    wrote = vblk("write-pattern", str(qcow2))
    assert wrote.status == ExitStatus.OK and "vblk: wrote 2048 sectors" in wrote.stdout
    again = vblk("sha256", f"path={qcow2},format=qcow2")
    assert f"vblk: sha256 {sha(pattern())}" in again.stdout
    assert base.read_bytes() == base_bytes  # the writes went to the qcow2
    assert qcow2.read_bytes()[:4] == b"QFI\xfb"  # its header never taken for data
    assert leftovers() == before


def test_snapshot_throws_the_writes_away_and_overlay_keeps_them(base, tmp_path) -> None:
    digest = sha(base.read_bytes())
    before = leftovers()
    thrown = vblk("write-pattern", f"path={base},snapshot=on")
    assert thrown.status == ExitStatus.OK, thrown.stderr
    assert "vblk: wrote 2048 sectors" in thrown.stdout
    assert sha(base.read_bytes()) == digest and leftovers() == before
    kept = tmp_path / "run1.qcow2"
    first = vblk("write-pattern", f"path={base},overlay={kept}")
    assert first.status == ExitStatus.OK, first.stderr
    assert sha(base.read_bytes()) == digest
    # The guest's writes are in the overlay, which a later run goes on from.
    second = vblk("sha256", str(kept))
    assert f"vblk: sha256 {sha(pattern())}" in second.stdout, second.stderr
    again = vblk("write-pattern", f"path={base},overlay={kept}")
    assert again.status == ExitStatus.BAD_INPUT and "exists" in again.stderr


def test_overlays_last_across_a_guest_reboot(base, tmp_path, private_tmpdir) -> None:
    """--on-reboot restart: the guest finds its writes after a reboot (the daemon, its
    export and the overlay stay until pyvmm exits); the next run starts from the base
    again, and overlay= keeps them for later."""
    digest = sha(base.read_bytes())
    private, env = private_tmpdir, dict(os.environ)  # pyvmm's TMPDIR: the daemon's directory

    def persist(drive: str, *options: str) -> str:
        # First boot: no pattern, so the guest writes it and reboots; the second boot
        # finds it and says so through the debug-exit port (status 1).
        result = vblk("persist", drive, env=env, options=options)
        out, err = result.stdout.decode(), result.stderr.decode()
        assert result.returncode == 1, out + err
        assert ("the guest rebooted; restarting it" in err) == bool(options), err
        assert list(private.iterdir()) == []
        return out

    for _ in range(2):  # the second run sees none of the first one's writes
        out = persist(f"path={base},snapshot=on", "--on-reboot", "restart")
        assert out.splitlines() == ["vblk: wrote 2048 sectors", "vblk: pattern found"], out
        assert sha(base.read_bytes()) == digest
    kept = tmp_path / "kept.qcow2"
    persist(f"path={base},overlay={kept}", "--on-reboot", "restart")
    assert persist(str(kept)).splitlines() == ["vblk: pattern found"]
    assert sha(base.read_bytes()) == digest


def test_a_signal_as_the_guest_restarts_leaves_no_daemon_or_overlay(base, private_tmpdir) -> None:
    """SIGTERM when pyvmm says the guest rebooted, between two machines or in the
    second one's build or run: pyvmm exits with 128+15 (or 1, if the second boot
    won the race), and the daemon, its directory and the overlay are gone."""
    private = private_tmpdir
    proc = subprocess.Popen(pyvmm_command(
        "run", "-k", str(image("tiny/vblk.bzImage")), "-a", "console=ttyS0 blktest=persist",
        "--timeout", "90", "--drive", f"path={base},snapshot=on", "--on-reboot", "restart"),
        cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        err = b""
        while b"restarting it" not in err:
            line = proc.stderr.readline()
            assert line, err
            err += line
        proc.send_signal(signal.SIGTERM)
        err += proc.stderr.read()
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status in (128 + signal.SIGTERM, 1), err
    assert b"Traceback" not in err
    assert list(private.iterdir()) == []
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit()
                and str(private).encode() in _cmdline(pid)]


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def test_the_global_snapshot_option(base) -> None:
    digest = sha(base.read_bytes())
    result = run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")), "--drive", str(base),
                       "--snapshot", "-a", "console=ttyS0 blktest=write-pattern",
                       "--timeout", "90")
    assert result.status == ExitStatus.OK and "vblk: wrote 2048 sectors" in result.stdout
    assert sha(base.read_bytes()) == digest


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_qemu_and_pyvmm_keep_off_each_others_qcow2(base, tmp_path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    make_qcow2_over(base, qcow2)
    qemu_cmd = [str(QEMU), "-S", "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg",
                "-drive", f"file={qcow2},format=qcow2,if=none,id=d0",
                "-device", "virtio-blk-pci,drive=d0"]
    qemu = subprocess.Popen(qemu_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(2)
        assert qemu.poll() is None
        refused = vblk("sha256", str(qcow2))
        assert refused.status == ExitStatus.BAD_INPUT, refused.stderr
        assert "lock" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    finally:
        qemu.terminate()
        qemu.wait(10)
    pyvmm = subprocess.Popen(pyvmm_command(
        "run", "-k", str(image("tiny/vblk.bzImage")), "--drive", str(qcow2),
        "-a", "console=ttyS0 blktest=write-hang", "--timeout", "60"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for_output(pyvmm, b"hanging")
        qemu_run = subprocess.run(qemu_cmd, capture_output=True, timeout=60)
        assert qemu_run.returncode != 0 and b"lock" in qemu_run.stderr
    finally:
        pyvmm.terminate()
        pyvmm.wait(30)
    assert base.read_bytes() != b"" and qcow2.read_bytes()[:4] == b"QFI\xfb"


def wait_for_output(proc: subprocess.Popen, marker: bytes, timeout: float = 60) -> None:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, seen
        seen += chunk


def children_named(pid: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if int(fields.split()[1]) == pid and comm.startswith(name[:15]):
            found.append(int(entry))
    return found


def test_a_killed_daemon_stops_the_guest_with_one_line(base) -> None:
    before = leftovers()
    proc = subprocess.Popen(pyvmm_command(
        "run", "-k", str(image("tiny/vblk.bzImage")), "--drive", f"path={base},snapshot=on",
        "-a", "console=ttyS0 blktest=write-hang", "--timeout", "60"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for_output(proc, b"hanging")
        (daemon,) = children_named(proc.pid, DAEMON)
        os.kill(daemon, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in stderr.decode().splitlines()
             if line.strip() and "kvm_pvm" not in line]
    assert proc.returncode == ExitStatus.VMM_ERROR
    assert len(lines) == 1 and "qemu-storage-daemon was killed by signal 9" in lines[0]
    assert leftovers() == before
    assert children_named(proc.pid, DAEMON) == []


def test_no_daemon_is_one_line_naming_the_package(base, tmp_path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    make_qcow2_over(base, qcow2)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = vblk("sha256", str(qcow2), env=env)
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "pyvmm: error: qemu-storage-daemon not found: install Debian's qemu-system-common "
        "(it serves qcow2 and the other image formats, and snapshot=on)"]
