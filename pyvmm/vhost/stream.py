"""QEMU's stream network protocol over a connected socket: the link to passt.

Each Ethernet frame travels as a 4-byte big-endian length and the frame
(QEMU's ``-netdev stream``/``socket``; passt's ``--fd``), with no virtio-net
header.  ``FrameStream`` reads and writes it on a non-blocking socket with
bounded buffers:

- input: the socket is read only while no whole frame waits in the buffer
  (``next_frame`` until ``consume_frame``), at most ``READ_CHUNK`` bytes at
  a time, so what is held is one chunk and one partial frame.  A frame
  longer than ``max_frame`` is skipped as it streams in, never held, and
  counted.  ``wanted_events`` drops EPOLLIN while a frame waits: a guest
  without receive buffers holds the peer back (back-pressure), not our memory.
- output: ``send`` writes what the socket takes at once and keeps the rest;
  ``can_send`` is False from ``OUTPUT_LIMIT`` bytes on, so the caller stops
  taking frames until ``flush`` (on EPOLLOUT) drains it.

The owner watches ``fileno()`` for ``wanted_events()``; ``on_interest`` is
called whenever that set changes (from ``send`` and ``consume_frame`` too).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from typing import Callable

from pyvmm.vhost.link import WatchedLink

_LENGTH = struct.Struct(">I")
#: Most bytes one read takes from the socket.
READ_CHUNK = 256 << 10
#: Output bytes kept for a slow peer before the device stops transmitting.
OUTPUT_LIMIT = 256 << 10
#: Largest frame accepted from the peer: a 64 KiB MTU with its headers.
DEFAULT_MAX_FRAME = 65535 + 18


class FrameStream(WatchedLink):
    """Length-prefixed Ethernet frames over a connected stream socket (which it owns)."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
                 on_interest: Callable[[int], None] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_frame = max_frame
        self.on_interest = on_interest
        self._input = bytearray()
        self._output = bytearray()
        #: Bytes still to skip of a frame that was too long.
        self._skip = 0
        self._frame: bytes | None = None
        #: The peer closed its end (or the socket failed): no more input.
        self.closed = False
        self.oversize_frames = 0
        self._interest = self.wanted_events()

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- input -------------------------------------------------------------------------------

    def fill(self) -> None:
        """Read what the socket has (one chunk), unless a whole frame already waits."""
        if self.closed or self.next_frame() is not None:
            return
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
        else:
            self._input += data
        self._interest_changed()

    def next_frame(self) -> bytes | None:
        """The oldest whole frame received and not consumed, or None."""
        if self._frame is None:
            self._frame = self._parse()
        return self._frame

    def consume_frame(self) -> None:
        self._frame = None
        self._interest_changed()

    def _parse(self) -> bytes | None:
        buffer = self._input
        while True:
            if self._skip:
                count = min(self._skip, len(buffer))
                del buffer[:count]
                self._skip -= count
                if self._skip:
                    return None
            if len(buffer) < _LENGTH.size:
                return None
            length = _LENGTH.unpack_from(buffer)[0]
            if length > self.max_frame:
                self.oversize_frames += 1
                del buffer[:_LENGTH.size]
                self._skip = length
                continue
            if len(buffer) < _LENGTH.size + length:
                return None
            frame = bytes(buffer[_LENGTH.size:_LENGTH.size + length])
            del buffer[:_LENGTH.size + length]
            if length:  # an empty frame carries nothing
                return frame

    # -- output ------------------------------------------------------------------------------

    def can_send(self) -> bool:
        return not self.closed and len(self._output) < OUTPUT_LIMIT

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` (with its length) and write what the socket takes now."""
        if self.closed:
            return
        if self._output:
            self._output += _LENGTH.pack(len(frame))
            self._output += frame
            return  # EPOLLOUT is already wanted: flush() writes it in order
        message = _LENGTH.pack(len(frame)) + frame
        sent = self._write(message)
        if sent < len(message):
            self._output += message[sent:]
            self._interest_changed()

    def flush(self) -> None:
        """Write what is kept (the socket became writable)."""
        if self._output:
            sent = self._write(self._output)
            del self._output[:sent]
        self._interest_changed()

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            self.closed = True
            self._output.clear()
            return len(data)

    # -- what to watch ---------------------------------------------------------------------------

    def wanted_events(self) -> int:
        """EPOLLIN unless a whole frame waits (or the peer is gone); EPOLLOUT while output waits."""
        events = 0
        if not self.closed and self.next_frame() is None:
            events |= select.EPOLLIN
        if self._output:
            events |= select.EPOLLOUT
        return events

    def close(self) -> None:
        self.sock.close()
