"""pyvmm and a real QEMU keep each other off an image they write (both orders)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from pyvmm.exitstatus import ExitStatus

from .conftest import REPO, image, pyvmm_command, run_pyvmm

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def qemu_command(path, readonly: bool = False) -> list[str]:
    """A QEMU that opens ``path`` as a virtio-blk disk (and so locks it), CPUs stopped."""
    drive = f"file={path},format=raw,if=none,id=d0" + (",readonly=on" if readonly else "")
    return [str(QEMU), "-S", "-nodefaults", "-display", "none", "-machine", "pc,accel=tcg",
            "-drive", drive, "-device", "virtio-blk-pci,drive=d0"]


def wait_for_lock(path, timeout: float = 20.0) -> None:
    """Until someone holds QEMU's "write" byte (101) of ``path``."""
    import fcntl
    import os
    import struct

    flock = struct.Struct("hh4xqqi4x")
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                                 flock.pack(fcntl.F_WRLCK, 0, 101, 1, 0))
            if flock.unpack(answer)[0] != fcntl.F_UNLCK:
                return
            time.sleep(0.1)
    finally:
        os.close(fd)
    raise AssertionError(f"nobody locked {path} within {timeout} s")


@pytest.mark.parametrize("readonly", [False, True])
def test_pyvmm_refuses_an_image_qemu_writes(disk, readonly) -> None:
    qemu = subprocess.Popen(qemu_command(disk), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_lock(disk)
        spec = f"path={disk}" + (",readonly=on" if readonly else "")
        result = run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")), "--drive", spec)
        assert result.status == ExitStatus.BAD_INPUT, result.stderr
        assert "locked by another process" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        qemu.terminate()
        qemu.wait(10)


def test_qemu_refuses_an_image_pyvmm_writes(disk) -> None:
    pyvmm = subprocess.Popen(pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")),
                                           "--drive", str(disk), "--timeout", "60"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for_lock(disk)
        for readonly in (False, True):
            qemu = subprocess.run(qemu_command(disk, readonly), capture_output=True,
                                  timeout=30, text=True)
            assert qemu.returncode != 0
            assert "lock" in qemu.stderr and "Is another process using the image" \
                in qemu.stderr, qemu.stderr
    finally:
        pyvmm.terminate()
        pyvmm.wait(10)


def test_readers_share_with_qemu(disk) -> None:
    """A read-only QEMU and a read-only pyvmm may use one image together."""
    qemu = subprocess.Popen(qemu_command(disk, readonly=True), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        assert qemu.poll() is None
        result = run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")),
                           "--drive", f"path={disk},readonly=on", "--timeout", "60")
        assert result.status == ExitStatus.OK, result.stdout + result.stderr
    finally:
        qemu.terminate()
        qemu.wait(10)
