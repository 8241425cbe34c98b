"""The vhost-user front end against a fake back end on a socketpair: bytes and fds sent."""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Callable

import pytest

from pyvmm.errors import DeviceError
from pyvmm.vhost.frontend import (FLAG_NEED_REPLY, FLAG_REPLY, F_PROTOCOL_FEATURES,
                              PROTOCOL_F_REPLY_ACK, MemoryRegionFd, Request, VhostUserFrontend,
                              VringConfig)

Reply = Callable[[int, bytes], bytes | None]


class FakeBackend(threading.Thread):
    """Records each message (request, flags, payload, fds); answers through ``reply``."""

    def __init__(self, sock: socket.socket, reply: Reply) -> None:
        super().__init__(daemon=True)
        self.sock, self.reply = sock, reply
        self.messages: list[tuple[int, int, bytes, list[int]]] = []

    def run(self) -> None:
        while True:
            header, fds, _, _ = socket.recv_fds(self.sock, 12, 16)
            if not header:
                return
            request, flags, size = struct.unpack("<III", header)
            payload = b""
            while len(payload) < size:
                payload += self.sock.recv(size - len(payload))
            self.messages.append((request, flags, payload, fds))
            answer = self.reply(request, payload)
            if answer is None and flags & FLAG_NEED_REPLY:
                answer = struct.pack("<Q", 0)
            if answer is not None:
                self.sock.sendall(struct.pack("<III", request, 1 | FLAG_REPLY, len(answer))
                                  + answer)


def virtiofsd_like(request: int, payload: bytes) -> bytes | None:
    if request == Request.GET_FEATURES:
        return struct.pack("<Q", (1 << 32) | (1 << 29) | F_PROTOCOL_FEATURES)
    if request == Request.GET_PROTOCOL_FEATURES:
        return struct.pack("<Q", PROTOCOL_F_REPLY_ACK | (1 << 0) | (1 << 5))
    if request == Request.GET_VRING_BASE:
        return payload[:4] + struct.pack("<I", 42)
    return None


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_handshake_then_start_sends_the_table_rings_and_fds(pair) -> None:
    ours, theirs = pair
    backend = FakeBackend(theirs, virtiofsd_like)
    backend.start()
    front = VhostUserFrontend(ours)
    features = front.handshake()
    assert features == (1 << 32) | (1 << 29) | F_PROTOCOL_FEATURES
    # Only REPLY_ACK of what the back end offered is taken.
    assert front.protocol_features == PROTOCOL_F_REPLY_ACK

    memfd = os.memfd_create("ram")
    kick, call = os.eventfd(0), os.eventfd(0)
    regions = [MemoryRegionFd(0, 0x10000, memfd, 0), MemoryRegionFd(0x100000, 0x20000, memfd,
                                                                   0x10000)]
    front.start((1 << 32) | (1 << 29), regions,
                [VringConfig(1, 128, 0x1000, 0x2000, 0x3000, kick, call)], features)
    assert front.get_vring_base(1) == 42

    sent = [(Request(r), flags, payload, len(fds)) for r, flags, payload, fds in backend.messages]
    assert [m[0] for m in sent] == [
        Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
        Request.SET_OWNER, Request.SET_FEATURES, Request.SET_MEM_TABLE, Request.SET_VRING_NUM,
        Request.SET_VRING_BASE, Request.SET_VRING_ADDR, Request.SET_VRING_KICK,
        Request.SET_VRING_CALL, Request.SET_VRING_ENABLE, Request.GET_VRING_BASE]
    by_request = {m[0]: m for m in sent}
    # After REPLY_ACK is agreed, requests without a reply ask for an acknowledgement.
    assert by_request[Request.SET_OWNER][1] == 1 | FLAG_NEED_REPLY
    assert by_request[Request.SET_PROTOCOL_FEATURES][2] == struct.pack("<Q", PROTOCOL_F_REPLY_ACK)
    assert by_request[Request.SET_FEATURES][2] == struct.pack(
        "<Q", (1 << 32) | (1 << 29) | F_PROTOCOL_FEATURES)
    table = by_request[Request.SET_MEM_TABLE]
    assert table[3] == 2  # one fd per region
    assert table[2][:8] == struct.pack("<II", 2, 0)
    assert table[2][8:40] == struct.pack("<QQQQ", 0, 0x10000, 0, 0)
    assert table[2][40:72] == struct.pack("<QQQQ", 0x100000, 0x20000, 0x100000, 0x10000)
    assert len(table[2]) == 8 + 8 * 32
    assert by_request[Request.SET_VRING_NUM][2] == struct.pack("<II", 1, 128)
    assert by_request[Request.SET_VRING_BASE][2] == struct.pack("<II", 1, 0)
    assert by_request[Request.SET_VRING_ADDR][2] == struct.pack("<IIQQQQ", 1, 0, 0x1000, 0x3000,
                                                                0x2000, 0)
    assert by_request[Request.SET_VRING_KICK][2:] == (struct.pack("<Q", 1), 1)
    assert by_request[Request.SET_VRING_CALL][2:] == (struct.pack("<Q", 1), 1)
    assert by_request[Request.SET_VRING_ENABLE][2] == struct.pack("<II", 1, 1)

    # The fds that arrived are the same files: a write to our kick is read from theirs.
    kick_received = backend.messages[9][3][0]
    os.eventfd_write(kick, 5)
    assert os.eventfd_read(kick_received) == 5
    received_ram = backend.messages[5][3][0]
    os.pwrite(memfd, b"ram", 0)
    assert os.pread(received_ram, 3, 0) == b"ram"
    for fd in (memfd, kick, call):
        os.close(fd)


def test_without_protocol_features_rings_are_not_enabled_and_nothing_is_acked(pair) -> None:
    ours, theirs = pair
    backend = FakeBackend(theirs, lambda request, _payload: struct.pack("<Q", 1 << 32)
                          if request == Request.GET_FEATURES else None)
    backend.start()
    front = VhostUserFrontend(ours)
    assert front.handshake() == 1 << 32
    fd = os.eventfd(0)
    front.start(1 << 32, [MemoryRegionFd(0, 4096, fd, 0)],
                [VringConfig(0, 8, 0, 0, 0, fd, fd)], 1 << 32)
    front.close()
    backend.join(2)
    requests = [Request(m[0]) for m in backend.messages]
    assert Request.GET_PROTOCOL_FEATURES not in requests
    assert Request.SET_VRING_ENABLE not in requests
    assert all(not m[1] & FLAG_NEED_REPLY for m in backend.messages)
    os.close(fd)


def test_a_back_end_that_hangs_up_is_one_clear_error(pair) -> None:
    ours, theirs = pair
    theirs.close()
    front = VhostUserFrontend(ours, "virtiofsd for /srv")
    with pytest.raises(DeviceError, match="virtiofsd for /srv"):
        front.get_features()


def test_a_wrong_reply_is_refused(pair) -> None:
    ours, theirs = pair
    FakeBackend(theirs, lambda request, _p: struct.pack("<Q", 7)).start()
    front = VhostUserFrontend(ours)
    front.protocol_features = PROTOCOL_F_REPLY_ACK
    with pytest.raises(DeviceError, match="refused SET_OWNER"):
        front.set_owner()


def test_connecting_to_nothing_names_the_path(tmp_path) -> None:
    with pytest.raises(DeviceError, match="cannot connect to virtiofsd at .*sock"):
        VhostUserFrontend.connect(str(tmp_path / "sock"), "virtiofsd")
