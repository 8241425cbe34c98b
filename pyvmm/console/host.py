"""The host side of the guest console: our stdin/stdout, raw mode, Ctrl-A escapes.

When stdin is a terminal it goes to raw mode (restored on every exit path,
including every signal that ends pyvmm: ``FATAL_SIGNALS``) and Ctrl-A starts
an escape as in QEMU's ``-nographic``: Ctrl-A x quits, Ctrl-A h prints help,
Ctrl-A Ctrl-A sends a Ctrl-A.  Ctrl-C goes to the guest.

stdin is read only when poll says it has data, and never made O_NONBLOCK: on a
terminal stdin and stdout are one open file, so the flag would make our own
output writes fail (and outlive us in the shell).  Guest output is never
dropped: if stdout is non-blocking anyway (set by whoever started us), a full
stdout is waited for.  Whatever flags we change come back in ``restore``.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import select
import signal
import sys
import termios
import tty
from typing import Any, Callable

ESCAPE_CHAR = 0x01  # Ctrl-A

#: Signals whose default action ends the process and that can be caught safely
#: (not the CPU faults SIGSEGV/SIGBUS/SIGILL/SIGFPE, whose handlers would return
#: into the faulting code; not SIGKILL).  The machine stops on each, so the
#: terminal and stdin/stdout flags are restored; SIGUSR1 is the live dump.
FATAL_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTRAP, signal.SIGABRT,
    signal.SIGUSR2, signal.SIGALRM, signal.SIGTERM, signal.SIGSTKFLT, signal.SIGIO,
    signal.SIGPWR, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU)

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
        self._saved_flags: dict[int, int] = {}
        self._input_poll = select.poll()
        self._input_poll.register(self.stdin_fd, select.POLLIN)
        self._output_poll = select.poll()
        self._output_poll.register(self.stdout_fd, select.POLLOUT)

    def start(self) -> None:
        """Remember stdin's and stdout's file flags, and put a terminal in raw mode."""
        for fd in (self.stdin_fd, self.stdout_fd):
            try:
                self._saved_flags.setdefault(fd, fcntl.fcntl(fd, fcntl.F_GETFL))
            except OSError:
                pass
        if self._terminal is not None:
            self._terminal.make_raw()

    def restore(self) -> None:
        """The terminal settings and file flags as they were before ``start``."""
        if self._terminal is not None:
            self._terminal.restore()
        for fd, flags in self._saved_flags.items():
            try:
                if fcntl.fcntl(fd, fcntl.F_GETFL) != flags:
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass

    def write(self, data: bytes | memoryview) -> None:
        """Guest output to stdout, whole: waits while stdout is full, never drops.

        Only a stdout nobody reads any more (EPIPE, or closed) loses output.
        """
        view = memoryview(data)
        try:
            while view:
                try:
                    written = os.write(self.stdout_fd, view)
                except BlockingIOError:
                    self._output_poll.poll(100)  # a non-blocking stdout is full: wait
                    continue
                view = view[written:]
        except (BrokenPipeError, ValueError):
            pass
        except OSError:
            pass  # EIO on a hung-up terminal: nobody to show it to

    def read_input(self, limit: int = 4096) -> bytes:
        """Read what stdin has (up to ``limit``), applying escapes; b'' at EOF.

        Never blocks: stdin is read only when poll says it is readable.
        """
        try:
            if not self._input_poll.poll(0):
                return b""
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
