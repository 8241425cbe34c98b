"""QEMU's stream network protocol over a connected socket: the link to passt.

Each Ethernet frame travels as a 4-byte big-endian length and the frame
(QEMU's ``-netdev stream``/``socket``; passt's ``--fd``), with no virtio-net
header.  ``FrameStream`` reads and writes it on a non-blocking socket with
bounded buffers, which are C arrays (``_stream_build.py``): the NIC's C half
moves frames between them and its rings without Python per frame
(``pyvmm.devices.virtio.net``), and the methods here are the same buffers
seen from Python:

- input: the socket is read only while no whole frame waits in the buffer
  (``next_frame`` until ``consume_frame``), at most the buffer's room (one
  ``READ_CHUNK`` and a partial frame) at a time.  A frame longer than
  ``max_frame`` is skipped as it streams in, never held, and counted.
  ``wanted_events`` drops EPOLLIN while a frame waits: a guest without
  receive buffers holds the peer back (back-pressure), not our memory.
- output: ``send`` writes what the socket takes at once and keeps the rest;
  ``can_send`` is False from ``OUTPUT_LIMIT`` bytes on, so the caller stops
  taking frames until ``flush`` (on EPOLLOUT) drains it.

The owner watches ``fileno()`` for ``wanted_events()``; ``on_interest`` is
called whenever that set changes (from ``send`` and ``consume_frame`` too).
While the NIC's serving thread owns the socket (``served_elsewhere``), the
owner's loop watches only for the peer going away.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable

from pyvmm.vhost.link import WatchedLink

#: Most bytes one read takes from the socket (beyond a partial frame held).
READ_CHUNK = 256 << 10
#: Output bytes kept for a slow peer before the device stops transmitting.
OUTPUT_LIMIT = 256 << 10
#: Largest frame accepted from the peer: a 64 KiB MTU with its headers.
DEFAULT_MAX_FRAME = 65535 + 18
#: The output buffer holds OUTPUT_LIMIT and one more frame of any size a device sends.
_LARGEST_SENT = 65535 + 18 + 4


def c_module() -> tuple[Any, Any]:
    """The C half's ``ffi`` and ``lib`` (``_stream_build.py``), imported when first needed."""
    from pyvmm.vhost._stream_cffi import ffi, lib  # type: ignore[import-not-found]

    return ffi, lib


class FrameStream(WatchedLink):
    """Length-prefixed Ethernet frames over a connected stream socket (which it owns)."""

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
                 on_interest: Callable[[int], None] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.max_frame = max_frame
        self.on_interest = on_interest
        ffi, self._lib = c_module()
        self._ffi = ffi
        self._in = ffi.new("uint8_t[]", READ_CHUNK + 4 + max_frame)
        self._out = ffi.new("uint8_t[]", OUTPUT_LIMIT + _LARGEST_SENT)
        #: The C state; ``c_stream`` is what the NIC's C half takes.
        self.c_stream = ffi.new("pyvmm_stream *", {
            "fd": sock.fileno(), "max_frame": max_frame,
            "in": self._in, "in_cap": READ_CHUNK + 4 + max_frame,
            "out": self._out, "out_cap": OUTPUT_LIMIT + _LARGEST_SENT,
            "out_limit": OUTPUT_LIMIT})
        #: A serving thread reads and writes the socket: Python leaves the buffers alone.
        self.served_elsewhere = False
        self._interest = self.wanted_events()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        """The peer closed its end (or the socket failed): no more input."""
        if self.c_stream.closed:
            return True
        if self.served_elsewhere:  # the thread may not have read the end yet
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLRDHUP)
            return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                       for _, events in poller.poll(0))
        return False

    @closed.setter
    def closed(self, value: bool) -> None:
        self.c_stream.closed = int(value)

    @property
    def oversize_frames(self) -> int:
        """Frames longer than ``max_frame`` from the peer, skipped."""
        return int(self.c_stream.oversize)

    @property
    def held_input(self) -> int:
        """Bytes read and not yet consumed (a partial frame, frames waiting)."""
        return int(self.c_stream.in_len - self.c_stream.in_start)

    @property
    def held_output(self) -> int:
        """Bytes kept for the peer, not yet written."""
        return int(self.c_stream.out_len)

    # -- input -------------------------------------------------------------------------------

    def fill(self) -> None:
        """Read what the socket has (one chunk), unless a whole frame already waits."""
        if self.served_elsewhere:
            return
        self._lib.pyvmm_stream_fill(self.c_stream)
        self._interest_changed()

    def next_frame(self) -> bytes | None:
        """The oldest whole frame received and not consumed, or None."""
        stream = self.c_stream
        if self.served_elsewhere or not self._lib.pyvmm_stream_peek(stream):
            return None
        start = stream.in_start + 4
        return bytes(self._ffi.buffer(self._in + start, stream.frame_len))

    def consume_frame(self) -> None:
        if not self.served_elsewhere:
            self._lib.pyvmm_stream_consume(self.c_stream)
        self._interest_changed()

    def frame_waits(self) -> bool:
        """Whether a whole frame waits (what ``next_frame`` says, without copying it)."""
        return not self.served_elsewhere and bool(self._lib.pyvmm_stream_peek(self.c_stream))

    # -- output ------------------------------------------------------------------------------

    def can_send(self) -> bool:
        return not self.closed and self.c_stream.out_len < OUTPUT_LIMIT

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` (with its length) and write what the socket takes now."""
        if len(frame) > _LARGEST_SENT - 4:
            raise ValueError(f"a {len(frame)}-byte frame is longer than any link carries")
        self._check(self._lib.pyvmm_stream_send(self.c_stream, frame, len(frame)))
        self._interest_changed()

    def flush(self) -> None:
        """Write what is kept (the socket became writable)."""
        if not self.served_elsewhere:
            self._check(self._lib.pyvmm_stream_flush(self.c_stream))
        self._interest_changed()

    @staticmethod
    def _check(result: int) -> None:
        if result < 0:
            raise OSError(-result, f"passt's socket: {__import__('os').strerror(-result)}")

    # -- what to watch ---------------------------------------------------------------------------

    def wanted_events(self) -> int:
        """EPOLLIN unless a whole frame waits (or the peer is gone); EPOLLOUT while output waits
        (neither while a serving thread watches the socket itself)."""
        if self.served_elsewhere:
            return 0
        events = 0
        if not self.c_stream.closed and not self._lib.pyvmm_stream_peek(self.c_stream):
            events |= select.EPOLLIN
        if self.c_stream.out_len:
            events |= select.EPOLLOUT
        return events

    def interest_changed(self) -> None:
        """The C half moved frames: tell the owner if the events wanted changed."""
        self._interest_changed()

    def close(self) -> None:
        self.sock.close()
