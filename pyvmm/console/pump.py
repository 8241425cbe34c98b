"""The console pump: host input into the guest's console device, its output flushed.

Subscribed to the machine's event loop: stdin's fd when epoll can watch it
(a terminal, a pipe), else polled from the loop's tick (a regular file or
/dev/null, which never block).  Flow control: when the device's input buffer
is full, stdin is taken off the loop (so a paste or a pipe waits in the
kernel, not in our memory) and put back once the guest has read some.  The
tick also drains the UART's coalesced writes and flushes its line buffer on
time (``Serial.flush_due``), so output reaches the console within 10 ms; output
the UART fast path's C side served wakes the loop through its eventfd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pyvmm.console.host import HostConsole
from pyvmm.eventloop import EventLoop
from pyvmm.vcpu.uart_fastpath import UartFastPath

if TYPE_CHECKING:
    from pyvmm.devices.serial import Serial

#: How often a stdin epoll can't watch (a file), or a paused one, is looked at.
STDIN_POLL_SECONDS = 0.05


class ConsoleInput(Protocol):
    """A device that takes host keyboard input (the UART, virtio-console)."""

    def input_room(self) -> int: ...

    def enqueue_input(self, data: bytes) -> object: ...


class ConsolePump:
    """Moves ``console``'s input into ``target`` and keeps the UART's output flowing."""

    def __init__(self, console: HostConsole, target: ConsoleInput, serial: Serial | None,
                 uart_fast: UartFastPath | None) -> None:
        self.console = console
        self.target = target
        self._serial = serial
        self._fast = uart_fast
        self._loop: EventLoop | None = None
        self._paused = False
        self._is_file = False

    def subscribe(self, loop: EventLoop) -> None:
        """Watch the console's input on ``loop`` (stdin stays blocking: read only when ready)."""
        self._loop = loop
        if self._fast is not None:
            self._fast.wake_on_output(loop.wake_fd)  # output the C side served: see tick
        try:
            loop.add(self.console.stdin_fd, self.feed)
        except PermissionError:
            self._is_file = True  # a regular file or /dev/null: never blocks
        except OSError:
            self.console.at_eof = True  # no usable stdin

    def feed(self, _events: int = 0) -> None:
        """Move what stdin has into the device, pausing while its buffer is full."""
        assert self._loop is not None
        room = self.target.input_room()
        if room <= 0:
            if not self._is_file and not self._paused:
                self._loop.remove(self.console.stdin_fd)
                self._paused = True
            return
        data = self.console.read_input(min(room, 4096))
        if data:
            self.target.enqueue_input(data)
        elif self.console.at_eof and not self._is_file:
            self._loop.remove(self.console.stdin_fd)

    def tick(self) -> float | None:
        """Flush the UART's waiting output, feed stdin; the next wait bound."""
        fast = self._fast
        ring = fast.poll() if fast is not None and fast.coalescing else None
        output = self._serial.flush_due() if self._serial is not None else None
        if ring is not None:
            output = ring if output is None else min(output, ring)
        stdin = self._tick_stdin()
        return stdin if output is None else output if stdin is None else min(output, stdin)

    def _tick_stdin(self) -> float | None:
        """Resume a paused stdin, or poll a stdin epoll can't watch."""
        if self.console.at_eof or self._loop is None:
            return None
        if self._paused and self.target.input_room() > 0:
            self._paused = False
            self._loop.add(self.console.stdin_fd, self.feed)
        elif self._is_file:
            self.feed()
        return STDIN_POLL_SECONDS if (self._paused or self._is_file) else None

    def flush(self) -> None:
        """Every byte the guest sent reaches the console (at the stop)."""
        if self._serial is not None:
            self._serial.flush()
