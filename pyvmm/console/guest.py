"""The guest's console as a Python object: what it printed, ``expect``, and input.

``Console`` is what ``pyvmm.Machine.console`` gives a program: every byte the
guest wrote to its serial port or its virtio console (both go to one place,
as they go to one terminal under ``pyvmm run``), kept whole, and a way to
send it input.  Its machine side, ``_MachineSide``, is the ``HostConsole``
the builder wires to the devices: output comes in on the vCPU and event
loop threads, input goes out through a pipe the console pump watches, with
the same flow control as a terminal's.

``expect`` works like pexpect's: a regex over what arrived after the last
match (or ``read``) and what is still to come; it moves past the match.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from typing import AnyStr, Callable, Pattern

from pyvmm.console.host import HostConsole

#: How long ``write`` waits for the guest to take input before it gives up.
WRITE_SECONDS = 10.0


class _MachineSide(HostConsole):
    """The device end: guest output into the Console, input from its pipe."""

    def __init__(self, received: Callable[[bytes], None], input_fd: int, null_fd: int) -> None:
        super().__init__(on_quit=lambda: None, stdin_fd=input_fd, stdout_fd=null_fd)
        self._received = received

    def write(self, data: bytes | memoryview) -> None:
        self._received(bytes(data))


class Console:
    """A running guest's console: ``output``, ``read``, ``expect``, ``write``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._output = bytearray()
        self._cursor = 0
        self._closed_reason: str | None = None
        read_end, self._input_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._input_fd, False)  # write() waits with a timeout, never forever
        self._null_fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        self._read_end = read_end
        self.machine_side = _MachineSide(self._received, read_end, self._null_fd)

    # -- what the guest wrote ----------------------------------------------------------

    def _received(self, data: bytes) -> None:
        with self._cond:
            self._output += data
            self._cond.notify_all()

    @property
    def output(self) -> bytes:
        """Everything the guest has written so far."""
        with self._cond:
            return bytes(self._output)

    @property
    def text(self) -> str:
        """``output`` decoded as UTF-8 (undecodable bytes replaced)."""
        return self.output.decode(errors="replace")

    def read(self, timeout: float | None = 0) -> bytes:
        """What arrived after the last ``read`` or match; waits up to ``timeout`` for some."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._output) == self._cursor and self._closed_reason is None:
                if not self._wait(deadline):
                    break
            data = bytes(self._output[self._cursor:])
            self._cursor = len(self._output)
            return data

    def expect(self, pattern: str | bytes | Pattern[str] | Pattern[bytes],
               timeout: float | None = 30.0) -> re.Match:
        """The first match of ``pattern`` in what is unread and what comes; move past it.

        A text pattern matches the output decoded as UTF-8; a bytes pattern the
        bytes.  Raises ``TimeoutError`` after ``timeout`` seconds, ``EOFError`` if
        the machine stopped without the pattern appearing.
        """
        regex: Pattern = re.compile(pattern) if isinstance(pattern, (str, bytes)) else pattern
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                match = self._search(regex)
                if match is not None:
                    return match
                if self._closed_reason is not None:
                    raise EOFError(f"the machine stopped ({self._closed_reason}) before the "
                                   f"console showed {regex.pattern!r}")
                if not self._wait(deadline):
                    raise TimeoutError(f"the console did not show {regex.pattern!r} within "
                                       f"{timeout:g} s; it ended with: {self._tail()!r}")

    def _search(self, regex: Pattern[AnyStr]) -> re.Match | None:
        unread = bytes(self._output[self._cursor:])
        if isinstance(regex.pattern, bytes):
            match = regex.search(unread)
            if match is not None:
                self._cursor += match.end()
            return match
        text = unread.decode("utf-8", "surrogateescape")  # round-trips: offsets stay exact
        text_match = regex.search(text)
        if text_match is not None:
            self._cursor += len(text[:text_match.end()].encode("utf-8", "surrogateescape"))
        return text_match

    def _wait(self, deadline: float | None) -> bool:
        """Wait for more output (condition held); False once ``deadline`` has passed."""
        if deadline is None:
            self._cond.wait()
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._cond.wait(left)
        return True

    def _tail(self, limit: int = 200) -> str:
        return bytes(self._output[-limit:]).decode(errors="replace")

    # -- input ----------------------------------------------------------------------------

    def write(self, data: str | bytes, timeout: float = WRITE_SECONDS) -> None:
        """Send ``data`` to the guest's console input (the UART, or hvc0 when it is the console).

        Raises ``TimeoutError`` if the guest does not take it within ``timeout``.
        """
        view = memoryview(data.encode() if isinstance(data, str) else data)
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._input_fd, select.POLLOUT)
        while view:
            try:
                view = view[os.write(self._input_fd, view):]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the guest did not take console input within "
                                       f"{timeout:g} s") from None
                poller.poll(min(left, 0.1) * 1000)

    # -- the machine's side ---------------------------------------------------------------

    def machine_stopped(self, reason: str) -> None:
        """No more output will come: waiting ``expect``s and ``read``s end."""
        with self._cond:
            self._closed_reason = reason
            self._cond.notify_all()

    def close(self) -> None:
        """Release the pipe (after the machine is closed)."""
        for fd in (self._input_fd, self._read_end, self._null_fd):
            if fd >= 0:
                os.close(fd)
        self._input_fd = self._read_end = self._null_fd = -1
