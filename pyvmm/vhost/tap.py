"""A host tap interface for ``--net tap=NAME``: opened, its offloads set, frames moved.

``open_tap`` attaches to the tap through ``/dev/net/tun`` (``TUNSETIFF`` with
``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``): an existing tap the user may open
(``ip tuntap add NAME mode tap user $USER``), or a new one when pyvmm may make
it (``CAP_NET_ADMIN``: root); a tap pyvmm made is not persistent, so it goes
when the fd closes, on every exit path.  Each frame read or written carries the
12-byte virtio 1.x ``virtio_net_hdr`` (``TUNSETVNETHDRSZ``), so checksum and
segmentation offloads pass between the guest's driver and the host's stack
(``TUNSETOFFLOAD`` says which ones the guest takes).

``TapLink`` is the tap as a ``FrameLink`` for the virtio-net device pyvmm
serves itself (no vhost-net): a read is one frame, a write one frame.  It
holds at most ``INPUT_FRAMES`` frames read ahead and ``INPUT_BYTES`` bytes;
while they wait for the guest's receive buffers the tap is not read, and the
kernel drops what overflows its queue, as a NIC's ring does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
from collections import deque
from typing import Callable

from pyvmm.errors import SEE_CHECK, ConfigError
from pyvmm.vhost.link import WatchedLink

TUN_DEVICE = "/dev/net/tun"
# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
#: struct ifreq: the name (IFNAMSIZ) and the flags (a short), padded to 40 bytes.
IFREQ = struct.Struct("16sH22x")
#: virtio 1.x's header: the 10 bytes of virtio_net_hdr and num_buffers.
VNET_HEADER_BYTES = 12
#: One read takes the largest frame a tap gives with offloads on: a 64 KiB GSO
#: packet, its link headers and the vnet header (with room to spare).
READ_SIZE = 1 << 17
#: Frames (and bytes) read ahead of the guest's receive buffers.
INPUT_FRAMES = 64
INPUT_BYTES = 512 << 10
#: ``set_offloads``' argument: virtio-net feature bits -> the tap's TUN_F_* flags.
GUEST_OFFLOADS = ((1, TUN_F_CSUM), (7, TUN_F_TSO4), (8, TUN_F_TSO6), (9, TUN_F_TSO_ECN))
#: The virtio-net offload features a tap serves: CSUM, GUEST_CSUM, GUEST_TSO4/6/ECN,
#: HOST_TSO4/6/ECN (virtio 1.2 5.1.3; ``pyvmm.devices.virtio.net.OFFLOAD_FEATURES``).
VIRTIO_OFFLOADS = sum(1 << bit for bit in (0, 1, 7, 8, 9, 11, 12, 13))


class Tap:
    """An open tap (``fd``, non-blocking), its name, and whether pyvmm made it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.existed = os.path.exists(f"/sys/class/net/{name}")
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"--net tap={name}: cannot open {TUN_DEVICE}: {exc.strerror} "
                              f"(modprobe tun){SEE_CHECK}") from None
        try:
            request = bytearray(IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            fcntl.ioctl(fd, TUNSETIFF, request)
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADER_BYTES))
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"--net tap={name}: {_why(name, self.existed, exc)}") from None
        self.fd = fd
        #: What the guest may take from the tap and give it (virtio-net feature bits).
        self.offloads = self._probe_offloads()

    def _probe_offloads(self) -> int:
        """The virtio-net offload features this tap takes (all, on any Linux since 2.6.27)."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
                        | TUN_F_TSO_ECN)
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError:
            return 0
        return VIRTIO_OFFLOADS

    def set_offloads(self, features: int) -> None:
        """Let the host hand the guest what its negotiated virtio-net ``features`` take:
        checksums left to do, TCP segments up to 64 KiB (``TUNSETOFFLOAD``)."""
        flags = sum(flag for bit, flag in GUEST_OFFLOADS if features >> bit & 1)
        if not flags & TUN_F_CSUM:
            flags = 0  # segmentation needs checksum offload too
        for attempt in (flags, 0):  # refused: the tap finishes every frame itself
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, attempt)
                return
            except OSError:
                continue

    def mtu(self) -> int:
        """The interface's MTU (the guest is told the same), 1500 if it can't be read."""
        try:
            with open(f"/sys/class/net/{self.name}/mtu") as stream:
                return int(stream.read())
        except (OSError, ValueError):
            return 1500

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _why(name: str, existed: bool, exc: OSError) -> str:
    """One line for a TUNSETIFF (or vnet header size) that failed."""
    if exc.errno == errno.EPERM and not existed:
        return (f"there is no tap {name} and pyvmm may not make one (that needs root, "
                f"CAP_NET_ADMIN): make it first, ip tuntap add {name} mode tap user "
                f"{os.getuid()}")
    if exc.errno == errno.EPERM:
        return (f"not allowed to open this tap (make it with ip tuntap add {name} mode tap "
                f"user {os.getuid()}, or run as root)")
    if exc.errno == errno.EBUSY:
        return "the tap is in use by another program"
    if exc.errno == errno.EINVAL and existed:
        return "not a tap interface (a tun, another kind of interface, or a multiqueue tap)"
    return f"cannot open the tap: {exc.strerror}"


class TapLink(WatchedLink):
    """The tap as a ``FrameLink`` (frames with their vnet header) on a non-blocking fd.

    The owner watches ``fileno()`` for ``wanted_events()`` (``on_interest`` when
    that changes), calls ``fill`` on EPOLLIN; ``closed`` once the tap is gone
    (the interface deleted).  Writes never wait: a frame the tap refuses is
    dropped and counted, as a full NIC queue drops.
    """

    def __init__(self, tap: Tap, on_interest: Callable[[int], None] | None = None) -> None:
        self.tap = tap
        self.on_interest = on_interest
        self._input: deque[bytes] = deque()
        self._input_bytes = 0
        self.closed = False
        self.dropped_writes = 0
        self._interest = self.wanted_events()

    def fileno(self) -> int:
        return self.tap.fd

    def fill(self) -> None:
        """Read frames while the tap has them and the read-ahead has room."""
        while not self.closed and len(self._input) < INPUT_FRAMES \
                and self._input_bytes < INPUT_BYTES:
            try:
                frame = os.read(self.tap.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                frame = b""
            if not frame:
                self.closed = True  # EBADFD/EIO: the interface was deleted
                break
            self._input.append(frame)
            self._input_bytes += len(frame)
        self._interest_changed()

    def next_frame(self) -> bytes | None:
        return self._input[0] if self._input else None

    def consume_frame(self) -> None:
        if self._input:
            self._input_bytes -= len(self._input.popleft())
        self._interest_changed()

    def can_send(self) -> bool:
        return not self.closed

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        try:
            os.write(self.tap.fd, frame)
        except (BlockingIOError, InterruptedError):
            self.dropped_writes += 1
        except OSError as exc:
            if exc.errno in (errno.EBADFD, errno.EIO, errno.ENODEV):
                self.closed = True
            else:  # EINVAL (a header the tap can't use), ENOMEM, ...: this frame only
                self.dropped_writes += 1

    def flush(self) -> None:
        """Nothing waits: a tap write is whole or dropped."""

    def wanted_events(self) -> int:
        """EPOLLIN while the read-ahead has room."""
        if self.closed or len(self._input) >= INPUT_FRAMES or self._input_bytes >= INPUT_BYTES:
            return 0
        return select.EPOLLIN

    def close(self) -> None:
        self.tap.close()
