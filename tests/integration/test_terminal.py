"""pyvmm on a real terminal: raw mode, Ctrl-A x, SIGTERM, and the tty restored."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import termios
import time

import pytest

from tests.integration.conftest import REPO, image, pyvmm_command
from tests.integration.terminal import read_until


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR2,
                                    signal.SIGALRM, signal.SIGHUP],
                         ids=lambda signum: signal.Signals(signum).name)
def test_fatal_signals_stop_and_restore_the_terminal(on_pty, signum) -> None:
    kernel = str(image("tiny/loop.bzImage"))
    terminal = on_pty("run", "--kernel", kernel, "--timeout", "60")
    assert b"pyvmm-tiny: looping" in read_until(terminal.master, b"looping", 30)
    assert termios.tcgetattr(terminal.slave)[3] & termios.ECHO == 0  # raw while running
    terminal.proc.send_signal(signum)
    assert terminal.proc.wait(10) == 128 + signum
    terminal.assert_restored()


def test_ctrl_a_x_quits_with_status_0(on_pty) -> None:
    kernel = str(image("tiny/loop.bzImage"))
    terminal = on_pty("run", "--kernel", kernel, "--timeout", "60")
    read_until(terminal.master, b"looping", 30)
    os.write(terminal.master, b"\x01h")
    assert b"C-a x" in read_until(terminal.master, b"C-a x", 10)
    os.write(terminal.master, b"\x01x")
    assert terminal.proc.wait(10) == 0
    terminal.assert_restored()


def test_slow_terminal_reader_loses_no_output_and_no_flag_is_left(on_pty) -> None:
    """The guest prints faster than the terminal is read: every line arrives."""
    kernel = str(image("tiny/hostile.bzImage"))
    lines = 3000
    terminal = on_pty("run", "--kernel", kernel, "-m", "64M", "-a",
                      f"console=ttyS0 hostile=flood lines={lines}", "--timeout", "120")
    time.sleep(3)  # nobody reads: the terminal's buffer fills and stays full
    seen = b""
    while b"flood done" not in seen:
        ready, _, _ = select.select([terminal.master], [], [], 30)
        assert ready, seen[-200:]
        seen += os.read(terminal.master, 512)
        time.sleep(0.001)  # a slow reader
    assert terminal.proc.wait(30) == 0
    numbers = [int(line.split()[-1]) for line in seen.replace(b"\r", b"").split(b"\n")
               if line.startswith(b"hostile: line ")]
    assert numbers == list(range(lines))
    terminal.assert_restored()


def test_stdin_pipe_flags_are_left_as_they_were() -> None:
    """A later reader of the same pipe (a script's next command) must not get EAGAIN."""
    read_end, write_end = os.pipe()
    before = fcntl.fcntl(read_end, fcntl.F_GETFL)
    proc = subprocess.Popen(pyvmm_command("run", "--kernel", str(image("tiny/loop.bzImage")),
                                          "--timeout", "60"),
                            stdin=read_end, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        assert proc.stdout is not None
        assert b"looping" in read_until(proc.stdout.fileno(), b"looping", 30)
        assert fcntl.fcntl(read_end, fcntl.F_GETFL) & os.O_NONBLOCK == 0  # not even meanwhile
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert fcntl.fcntl(read_end, fcntl.F_GETFL) == before
        os.write(write_end, b"still here")
        assert os.read(read_end, 100) == b"still here"
    finally:
        proc.kill()
        os.close(read_end)
        os.close(write_end)
