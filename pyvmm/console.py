"""The host side of the guest console: our stdin/stdout, raw mode, Ctrl-A escapes.

When stdin is a terminal it goes to raw mode (restored on every exit path) and
Ctrl-A starts an escape as in QEMU's ``-nographic``: Ctrl-A x quits, Ctrl-A h
prints help, Ctrl-A Ctrl-A sends a Ctrl-A.  Ctrl-C goes to the guest.  When
stdin is not a terminal it is read when it has data and never blocks the VM.
"""

from __future__ import annotations

import atexit
import os
import sys
import termios
import tty
from typing import Any, Callable

ESCAPE_CHAR = 0x01  # Ctrl-A

HELP_TEXT = (
    "\r\nC-a h    print this help\r\n"
    "C-a x    exit pyvmm\r\n"
    "C-a C-a  send C-a to the guest\r\n"
)


class EscapeParser:
    """Splits console input into guest bytes and escape commands (pure)."""

    def __init__(self) -> None:
        self._pending_escape = False

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        """Return (bytes for the guest, escape commands seen: 'x', 'h', ...)."""
        out = bytearray()
        commands: list[str] = []
        for byte in data:
            if self._pending_escape:
                self._pending_escape = False
                if byte == ESCAPE_CHAR:
                    out.append(ESCAPE_CHAR)
                else:
                    commands.append(chr(byte))
            elif byte == ESCAPE_CHAR:
                self._pending_escape = True
            else:
                out.append(byte)
        return bytes(out), commands


class Terminal:
    """Puts a tty in raw mode and guarantees its settings come back."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list | None = None

    def make_raw(self) -> None:
        self._saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        tty.setraw(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass
            self._saved = None


def _fileno(stream: Any, mode: int) -> int:
    """The fd behind a std stream; /dev/null when there is none (closed, or a test's)."""
    try:
        return int(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return os.open(os.devnull, mode | os.O_CLOEXEC)


class HostConsole:
    """Reads our stdin for the guest and writes guest output to our stdout."""

    def __init__(self, on_quit: Callable[[], None], stdin_fd: int | None = None,
                 stdout_fd: int | None = None) -> None:
        self.stdin_fd = _fileno(sys.stdin, os.O_RDONLY) if stdin_fd is None else stdin_fd
        self.stdout_fd = _fileno(sys.stdout, os.O_WRONLY) if stdout_fd is None else stdout_fd
        self.is_tty = os.isatty(self.stdin_fd)
        self.on_quit = on_quit
        self._escapes = EscapeParser() if self.is_tty else None
        self._terminal = Terminal(self.stdin_fd) if self.is_tty else None
        self.at_eof = False

    def start(self) -> None:
        if self._terminal is not None:
            self._terminal.make_raw()

    def restore(self) -> None:
        if self._terminal is not None:
            self._terminal.restore()

    def write(self, data: bytes | memoryview) -> None:
        """Guest output to stdout, whole (a closed stdout drops it silently)."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.stdout_fd, view)
                view = view[written:]
        except BrokenPipeError:
            pass
        except BlockingIOError:
            pass

    def read_input(self, limit: int = 4096) -> bytes:
        """Read what stdin has (up to ``limit``), applying escapes; b'' at EOF."""
        try:
            data = os.read(self.stdin_fd, limit)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        if not data:
            self.at_eof = True
            return b""
        if self._escapes is None:
            return data
        guest_bytes, commands = self._escapes.feed(data)
        for command in commands:
            if command in ("x", "X"):
                self.on_quit()
            elif command in ("h", "H", "?"):
                self.write(HELP_TEXT.encode())
        return guest_bytes
