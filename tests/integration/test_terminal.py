"""pyvmm on a real terminal: raw mode, Ctrl-A x, SIGTERM, and the tty restored."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import termios
import time

from tests.integration.conftest import REPO, image, pyvmm_command


def read_until(fd: int, marker: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def start_on_pty(*args: str) -> tuple[subprocess.Popen, int, int, list]:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(pyvmm_command(*args), stdin=slave, stdout=slave,
                            stderr=slave, cwd=REPO, start_new_session=True)
    return proc, master, slave, before


def test_sigterm_stops_and_restores_the_terminal() -> None:
    kernel = str(image("tiny/loop.bzImage"))
    proc, master, slave, before = start_on_pty("run", "--kernel", kernel, "--timeout", "60")
    try:
        assert b"pyvmm-tiny: looping" in read_until(master, b"looping", 30)
        assert termios.tcgetattr(slave)[3] & termios.ECHO == 0  # raw while running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave) == before
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)


def test_ctrl_a_x_quits_with_status_0() -> None:
    kernel = str(image("tiny/loop.bzImage"))
    proc, master, slave, before = start_on_pty("run", "--kernel", kernel, "--timeout", "60")
    try:
        read_until(master, b"looping", 30)
        os.write(master, b"\x01h")
        assert b"C-a x" in read_until(master, b"C-a x", 10)
        os.write(master, b"\x01x")
        assert proc.wait(10) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        proc.kill()
        os.close(master)
        os.close(slave)
