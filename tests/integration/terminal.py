"""pyvmm on a pty, for the tests that need a real terminal (the ``on_pty`` fixture)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.integration.conftest import REPO, pyvmm_command


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


@dataclass
class Terminal:
    """pyvmm running with a pty as its stdin, stdout and stderr; ``attrs`` and ``flags``
    are the pty's termios attributes and file status flags from before it started."""

    proc: subprocess.Popen
    master: int
    slave: int
    attrs: list
    flags: int

    def assert_restored(self) -> None:
        assert termios.tcgetattr(self.slave) == self.attrs
        assert fcntl.fcntl(self.slave, fcntl.F_GETFL) == self.flags


def pty_starter() -> Iterator[Callable[..., Terminal]]:
    """Starts ``pyvmm ARGS...`` on a new pty; after the test, kills it and closes the pty."""
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        master, slave = pty.openpty()
        try:
            attrs, flags = termios.tcgetattr(slave), fcntl.fcntl(slave, fcntl.F_GETFL)
            proc = subprocess.Popen(pyvmm_command(*args), stdin=slave, stdout=slave,
                                    stderr=slave, cwd=REPO, start_new_session=True)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        started.append(Terminal(proc, master, slave, attrs, flags))
        return started[-1]

    yield start
    for terminal in started:
        terminal.proc.kill()
        terminal.proc.wait()
        os.close(terminal.master)
        os.close(terminal.slave)
