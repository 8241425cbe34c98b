"""A conversation with a guest's serial console: wait for what it prints, type a line.

For the guests that are whole systems (images/out/systemd: systemd, a getty
on ttyS0, root's shell): the tests log in at the prompt and type commands,
as a person at the console would, under pyvmm or QEMU alike (both take the
console on stdin and stdout).
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: What the systemd image's getty and root's bash print when they wait for a line.
LOGIN_PROMPT = b" login: "
ROOT_PROMPT = b":~# "
#: Terminal control sequences (colours, bash's bracketed-paste switches around each line).
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleTimeout(AssertionError):
    """The guest did not print what we waited for in time (the console so far is in it)."""


@dataclass
class ConsoleSession:
    """``command`` running with its stdin and stdout piped, the console read as it comes."""

    command: list[str]
    cwd: Path | None = None
    output: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    #: How far ``expect`` has matched: each match is looked for after the last.
    position: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ, self.output)
        self._selector.register(self.proc.stderr, selectors.EVENT_READ, self.stderr)

    def _read(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            chunk = os.read(key.fd, 1 << 16)
            if chunk:
                key.data.extend(chunk)
            else:
                self._selector.unregister(key.fileobj)

    def expect(self, marker: bytes, timeout: float) -> float:
        """Wait until the console prints ``marker`` (after the last match); seconds since
        the start.  ConsoleTimeout if it doesn't within ``timeout`` or the VMM ends first."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.output.find(marker, self.position)
            if found >= 0:
                self.position = found + len(marker)
                return self.elapsed()
            if not self._selector.get_map() or time.monotonic() > deadline:
                raise ConsoleTimeout(f"no {marker!r} on the console within {timeout:g} s "
                                     f"(status {self.proc.poll()}); it ended:\n"
                                     f"{self.text()[-3000:]}\nstderr: {self.stderr.decode()}")
            self._read(min(1.0, max(0.0, deadline - time.monotonic())))

    def type_line(self, line: str) -> None:
        """Type ``line`` and Enter on the console."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        """Read the console to the end; the VMM's exit status (killed after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._selector.get_map() and time.monotonic() < deadline:
            self._read(1.0)
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.close()
            raise ConsoleTimeout(f"no exit within {timeout:g} s; the console ended:\n"
                                 f"{self.text()[-3000:]}") from None

    def close(self) -> None:
        """Kill the VMM if it still runs, close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def elapsed(self) -> float:
        """Seconds since the VMM was started."""
        return time.monotonic() - self.started

    def text(self) -> str:
        """The console as plain lines: no CRs, no terminal control sequences."""
        return ESCAPES.sub("", self.output.decode(errors="replace").replace("\r", ""))

    def __enter__(self) -> ConsoleSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
