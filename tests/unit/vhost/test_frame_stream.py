"""QEMU's stream protocol (passt's --fd) with a fake peer on a socketpair: framing,
oversize frames skipped unheld, bounded input and output, the peer going away."""

from __future__ import annotations

import select
import socket
import struct

import pytest

from pyvmm.vhost.stream import OUTPUT_LIMIT, READ_CHUNK, FrameStream


@pytest.fixture
def pair():
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    changes: list[int] = []
    stream = FrameStream(ours, max_frame=2000, on_interest=changes.append)
    yield stream, peer, changes
    stream.close()
    peer.close()


def framed(*frames: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in frames)


def drain(stream: FrameStream) -> list[bytes]:
    got: list[bytes] = []
    while True:
        stream.fill()
        frame = stream.next_frame()
        if frame is None:
            return got
        got.append(frame)
        stream.consume_frame()


def test_frames_split_anywhere_arrive_whole(pair) -> None:
    stream, peer, _ = pair
    data = framed(b"a" * 60, b"b" * 1514, b"c")
    got: list[bytes] = []
    for cut in range(0, len(data), 7):
        peer.sendall(data[cut:cut + 7])
        got += drain(stream)
    assert got == [b"a" * 60, b"b" * 1514, b"c"]


def test_a_waiting_frame_stops_reading(pair) -> None:
    """Back-pressure: while a frame waits, EPOLLIN is off and the socket isn't read."""
    stream, peer, changes = pair
    peer.sendall(framed(b"x" * 100, b"y" * 100))
    stream.fill()
    assert stream.next_frame() == b"x" * 100
    assert not stream.wanted_events() & select.EPOLLIN and changes[-1] == 0
    peer.sendall(framed(b"z" * 100))
    stream.fill()  # not read: the frame still waits
    stream.consume_frame()
    assert stream.next_frame() == b"y" * 100  # parsed from what was read already
    stream.consume_frame()
    assert stream.wanted_events() & select.EPOLLIN and changes[-1] & select.EPOLLIN
    assert drain(stream) == [b"z" * 100]


def test_an_oversize_frame_is_skipped_without_holding_it(pair) -> None:
    stream, peer, _ = pair
    peer.setblocking(False)
    huge = 50 << 20  # announced; streamed in pieces, never buffered whole
    peer.send(struct.pack(">I", huge))
    sent = 0
    while sent < huge:
        try:
            sent += peer.send(b"\0" * min(1 << 20, huge - sent))
        except BlockingIOError:
            assert drain(stream) == []
            assert stream.held_input <= READ_CHUNK + 4
    peer.setblocking(True)
    peer.sendall(framed(b"after"))
    assert drain(stream) == [b"after"]
    assert stream.oversize_frames == 1


def test_output_is_bounded_and_drains_in_order(pair) -> None:
    stream, peer, changes = pair
    frames = [bytes([n]) * 1500 for n in range(256)]
    sent = 0
    while stream.can_send():
        stream.send(frames[sent % 256])
        sent += 1
    assert stream.held_output < OUTPUT_LIMIT + 1504
    assert stream.wanted_events() & select.EPOLLOUT and changes[-1] & select.EPOLLOUT
    received = bytearray()
    peer.setblocking(False)
    while len(received) < sent * 1504:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            stream.flush()
    assert bytes(received) == framed(*[frames[n % 256] for n in range(sent)])
    stream.flush()
    assert stream.can_send() and not stream.wanted_events() & select.EPOLLOUT


def test_the_peer_going_away(pair) -> None:
    stream, peer, _ = pair
    peer.sendall(framed(b"last"))
    peer.close()
    assert drain(stream) == [b"last"]
    assert stream.closed and not stream.can_send()
    stream.send(b"into the void")  # no EPIPE escapes
    assert stream.wanted_events() == 0


def test_empty_frames_are_skipped(pair) -> None:
    stream, peer, _ = pair
    peer.sendall(framed(b"", b"one"))
    assert drain(stream) == [b"one"]
