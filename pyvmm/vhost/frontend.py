"""The front end of the vhost-user protocol: hand a device's queues to another process.

A vhost-user back end (virtiofsd) serves virtqueues straight from guest RAM:
we send it the RAM (memfds, ``SET_MEM_TABLE``), each ring's layout and the
eventfds for its notifications (kick: our ioeventfd; call: our irqfd), so
request data never passes through Python.  Messages follow QEMU's
docs/interop/vhost-user.rst: a 12-byte header (request, flags, payload size)
and a payload, with fds as SCM_RIGHTS ancillary data.

Addresses we give as "front-end virtual addresses" are guest-physical ones:
the back end only uses them to find a region in the table we sent, so any
consistent numbering works and this module needs nothing from KVM.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass
from typing import Sequence

from pyvmm.errors import DeviceError


class Request(enum.IntEnum):
    """Front-end requests (the subset pyvmm sends)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    SET_MEM_TABLE = 5
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24


# The message layout, declared once.
HEADER = struct.Struct("<III")              # request, flags, payload size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")          # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")       # index, flags, desc, used, avail, log
MEM_TABLE_HEAD = struct.Struct("<II")       # number of regions, padding
MEM_REGION = struct.Struct("<QQQQ")         # guest address, size, user address, mmap offset
CONFIG_HEAD = struct.Struct("<III")         # offset, size, flags (then the bytes)

#: Flags: protocol version 1 in bits 0-1, bit 2 marks a reply, bit 3 asks for one.
VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
#: Bits 0-7 of SET_VRING_KICK/CALL's payload are the ring; bit 8 says "no fd".
VRING_INDEX_MASK = 0xFF
#: The most regions a back end must accept in SET_MEM_TABLE.
MAX_REGIONS = 8
#: Virtio feature bit 30: the back end speaks protocol features.
F_PROTOCOL_FEATURES = 1 << 30
#: Protocol feature: the back end acknowledges requests sent with NEED_REPLY.
PROTOCOL_F_REPLY_ACK = 1 << 3
#: Protocol feature: the back end has a config space (GET_CONFIG), as vhost-user-blk does.
PROTOCOL_F_CONFIG = 1 << 9
#: Protocol features pyvmm can use.
SUPPORTED_PROTOCOL_FEATURES = PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG
#: The largest config space we ask for (virtio-blk's is 60 bytes).
MAX_CONFIG_BYTES = 256
#: How long a back end may take to answer before we call it dead.
REPLY_TIMEOUT = 10.0


@dataclass(frozen=True)
class MemoryRegionFd:
    """One RAM region as the back end maps it: ``mmap(fd, size, offset)`` at ``guest_base``."""

    guest_base: int
    size: int
    fd: int
    fd_offset: int


@dataclass(frozen=True)
class VringConfig:
    """What a back end needs to serve one ring."""

    index: int
    size: int
    desc_addr: int
    avail_addr: int
    used_addr: int
    kick_fd: int
    call_fd: int


class VhostUserFrontend:
    """One connection to a back end; every method is one request (and its reply)."""

    def __init__(self, sock: socket.socket, name: str = "vhost-user back end") -> None:
        self.sock = sock
        self.name = name
        self.protocol_features = 0
        sock.settimeout(REPLY_TIMEOUT)

    @classmethod
    def connect(cls, path: str, name: str) -> "VhostUserFrontend":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DeviceError(f"cannot connect to {name} at {path}: {exc.strerror}") from None
        return cls(sock, name)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- the wire --------------------------------------------------------------------

    def _send(self, request: Request, payload: bytes = b"", fds: Sequence[int] = (),
              need_reply: bool = False) -> None:
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        message = HEADER.pack(request, flags, len(payload)) + payload
        try:
            if fds:
                socket.send_fds(self.sock, [message], list(fds))
            else:
                self.sock.sendall(message)
        except OSError as exc:
            raise DeviceError(f"{self.name}: sending {request.name} failed: "
                              f"{exc.strerror or exc}") from None

    def _receive(self, request: Request) -> bytes:
        header = self._read_exactly(HEADER.size, request)
        code, flags, size = HEADER.unpack(header)
        if code != request or not flags & FLAG_REPLY or size > 4096:
            raise DeviceError(f"{self.name}: bad reply to {request.name} "
                              f"(request {code}, flags {flags:#x}, size {size})")
        return self._read_exactly(size, request)

    def _read_exactly(self, length: int, request: Request) -> bytes:
        data = bytearray()
        while len(data) < length:
            try:
                chunk = self.sock.recv(length - len(data))
            except (TimeoutError, socket.timeout):
                raise DeviceError(f"{self.name} did not answer {request.name} "
                                  f"within {REPLY_TIMEOUT:g} s") from None
            except OSError as exc:
                raise DeviceError(f"{self.name}: {request.name}: {exc.strerror}") from None
            if not chunk:
                raise DeviceError(f"{self.name} closed the connection "
                                  f"(while answering {request.name})")
            data += chunk
        return bytes(data)

    def _request(self, request: Request, payload: bytes = b"",
                 fds: Sequence[int] = ()) -> None:
        """Send a request that has no reply; with REPLY_ACK, wait for its acknowledgement."""
        ack = bool(self.protocol_features & PROTOCOL_F_REPLY_ACK)
        self._send(request, payload, fds, need_reply=ack)
        if ack:
            (status,) = U64.unpack(self._receive(request))
            if status:
                raise DeviceError(f"{self.name} refused {request.name} (status {status})")

    def _get_u64(self, request: Request) -> int:
        self._send(request)
        reply = self._receive(request)
        if len(reply) != U64.size:
            raise DeviceError(f"{self.name}: {request.name} reply of {len(reply)} bytes")
        return int(U64.unpack(reply)[0])

    # -- requests ----------------------------------------------------------------------

    def get_features(self) -> int:
        return self._get_u64(Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self._request(Request.SET_FEATURES, U64.pack(features))

    def get_protocol_features(self) -> int:
        return self._get_u64(Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        self._send(Request.SET_PROTOCOL_FEATURES, U64.pack(features))
        self.protocol_features = features

    def set_owner(self) -> None:
        self._request(Request.SET_OWNER)

    def set_mem_table(self, regions: Sequence[MemoryRegionFd]) -> None:
        if not 0 < len(regions) <= MAX_REGIONS:
            raise DeviceError(f"{self.name}: {len(regions)} memory regions "
                              f"(vhost-user takes 1 to {MAX_REGIONS})")
        payload = MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(
            MEM_REGION.pack(r.guest_base, r.size, r.guest_base, r.fd_offset) for r in regions)
        payload += bytes(MEM_REGION.size * (MAX_REGIONS - len(regions)))
        self._request(Request.SET_MEM_TABLE, payload, [r.fd for r in regions])

    def set_vring_num(self, index: int, size: int) -> None:
        self._request(Request.SET_VRING_NUM, VRING_STATE.pack(index, size))

    def set_vring_base(self, index: int, base: int) -> None:
        self._request(Request.SET_VRING_BASE, VRING_STATE.pack(index, base))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self._request(Request.SET_VRING_ADDR, VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_vring_kick(self, index: int, fd: int) -> None:
        self._request(Request.SET_VRING_KICK, U64.pack(index & VRING_INDEX_MASK), [fd])

    def set_vring_call(self, index: int, fd: int) -> None:
        self._request(Request.SET_VRING_CALL, U64.pack(index & VRING_INDEX_MASK), [fd])

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._request(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, int(enable)))

    def get_config(self, size: int) -> bytes:
        """The first ``size`` bytes of the device's config space, as the back end has it."""
        if not 0 < size <= MAX_CONFIG_BYTES:
            raise ValueError(f"a config space of {size} bytes")
        self._send(Request.GET_CONFIG, CONFIG_HEAD.pack(0, size, 0) + bytes(size))
        reply = self._receive(Request.GET_CONFIG)
        offset, length, _flags = CONFIG_HEAD.unpack_from(reply) if len(reply) >= \
            CONFIG_HEAD.size else (0, -1, 0)
        if offset != 0 or length != size or len(reply) != CONFIG_HEAD.size + size:
            raise DeviceError(f"{self.name}: GET_CONFIG reply of {len(reply)} bytes "
                              f"(asked for {size})")
        return reply[CONFIG_HEAD.size:]

    def get_vring_base(self, index: int) -> int:
        """Stop ring ``index``; return the next available index the back end would read."""
        self._send(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0))
        reply = self._receive(Request.GET_VRING_BASE)
        if len(reply) != VRING_STATE.size:
            raise DeviceError(f"{self.name}: GET_VRING_BASE reply of {len(reply)} bytes")
        return VRING_STATE.unpack(reply)[1]

    # -- sequences ---------------------------------------------------------------------

    def handshake(self) -> int:
        """Features, protocol features and ownership; return the back end's virtio features."""
        features = self.get_features()
        if features & F_PROTOCOL_FEATURES:
            offered = self.get_protocol_features()
            self.set_protocol_features(offered & SUPPORTED_PROTOCOL_FEATURES)
        self.set_owner()
        return features

    def start(self, features: int, regions: Sequence[MemoryRegionFd],
              vrings: Sequence[VringConfig], backend_features: int) -> None:
        """Give the back end the negotiated features, the RAM and the rings; enable them."""
        self.set_features(features | (backend_features & F_PROTOCOL_FEATURES))
        self.set_mem_table(regions)
        for ring in vrings:
            self.set_vring_num(ring.index, ring.size)
            self.set_vring_base(ring.index, 0)
            self.set_vring_addr(ring.index, ring.desc_addr, ring.used_addr, ring.avail_addr)
            self.set_vring_kick(ring.index, ring.kick_fd)
            self.set_vring_call(ring.index, ring.call_fd)
        if backend_features & F_PROTOCOL_FEATURES:
            for ring in vrings:  # with protocol features, rings start disabled
                self.set_vring_enable(ring.index, True)
