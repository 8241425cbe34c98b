"""The host kernel's vhost-net: a tap NIC's queues served in the kernel, not in Python.

``VhostIoctls`` is the kernel's vhost interface (``<linux/vhost.h>``), common to
every ``/dev/vhost-*`` device: ownership, features, the memory table, each
ring's size, addresses, base, kick and call eventfds.  Unlike vhost-user, the
kernel reads guest RAM through pyvmm's own mappings: the memory table maps
guest-physical ranges to pyvmm's virtual addresses, and ring addresses are
given as pyvmm's virtual addresses too, so any guest RAM works (no memfd).

``VhostNet`` opens ``/dev/vhost-net`` for one NIC and, when the driver is
ready, hands it the rings and the tap (``VHOST_NET_SET_BACKEND``); the kick is
KVM's ioeventfd and the call KVM's irqfd, so a frame goes from the guest's ring
to the tap (and back) without waking pyvmm.  The tap supplies the 12-byte
virtio_net_hdr itself (``TUNSETVNETHDRSZ``), as QEMU sets it up, and offloads
are the tap's (``Tap.set_offloads``).  ``address_of`` (a buffer's address) comes
from the machine: this module knows nothing of KVM.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Callable, Sequence

from pyvmm.errors import SEE_CHECK, ConfigError, DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import VringConfig
from pyvmm.vhost.tap import Tap

VHOST_NET_DEVICE = "/dev/vhost-net"
# <linux/vhost.h>: _IO*(VHOST_VIRTIO = 0xAF, nr, type)
VHOST_GET_FEATURES = 0x8008AF00
VHOST_SET_FEATURES = 0x4008AF00
VHOST_SET_OWNER = 0x0000AF01
VHOST_SET_MEM_TABLE = 0x4008AF03
VHOST_SET_VRING_NUM = 0x4008AF10
VHOST_SET_VRING_ADDR = 0x4028AF11
VHOST_SET_VRING_BASE = 0x4008AF12
VHOST_GET_VRING_BASE = 0xC008AF12
VHOST_SET_VRING_KICK = 0x4008AF20
VHOST_SET_VRING_CALL = 0x4008AF21
VHOST_NET_SET_BACKEND = 0x4008AF30
MEMORY_HEAD = struct.Struct("<II")          # nregions, padding
MEMORY_REGION = struct.Struct("<QQQQ")      # guest address, size, our address, flags
VRING_STATE = struct.Struct("<II")          # index, num
VRING_FILE = struct.Struct("<Ii")           # index, fd (-1: none)
VRING_ADDR = struct.Struct("<IIQQQQ")       # index, flags, desc, used, avail, log
U64 = struct.Struct("<Q")
#: virtio-net features vhost-net may serve (its own list is longer: logging,
#: ACCESS_PLATFORM, RING_RESET, which pyvmm never offers): indirect descriptors,
#: EVENT_IDX, VERSION_1, mergeable receive buffers.
NET_RING_FEATURES = sum(1 << bit for bit in (28, 29, 32, 15))
#: Bit 27 (VHOST_NET_F_VIRTIO_NET_HDR): vhost would add the header; the tap does.
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27


class VhostIoctls:
    """One open ``/dev/vhost-*`` device and its ioctls (each a DeviceError if refused)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def ioctl(self, what: str, request: int, argument: bytes | bytearray | int = 0) -> None:
        try:
            fcntl.ioctl(self.fd, request, argument)
        except OSError as exc:
            raise DeviceError(f"{self.name}: {what} refused: {exc.strerror}") from None

    def set_owner(self) -> None:
        self.ioctl("VHOST_SET_OWNER", VHOST_SET_OWNER)

    def get_features(self) -> int:
        buffer = bytearray(U64.size)
        try:
            fcntl.ioctl(self.fd, VHOST_GET_FEATURES, buffer)
        except OSError as exc:
            raise DeviceError(f"{self.name}: VHOST_GET_FEATURES refused: {exc.strerror}") \
                from None
        return int(U64.unpack(buffer)[0])

    def set_features(self, features: int) -> None:
        self.ioctl("VHOST_SET_FEATURES", VHOST_SET_FEATURES, U64.pack(features))

    def set_mem_table(self, memory: GuestMemory, address_of: Callable[[object], int]) -> None:
        table = MEMORY_HEAD.pack(len(memory.regions), 0) + b"".join(
            MEMORY_REGION.pack(region.guest_base, region.size, address_of(region.buffer), 0)
            for region in memory.regions)
        self.ioctl("VHOST_SET_MEM_TABLE", VHOST_SET_MEM_TABLE, bytearray(table))

    def set_vring(self, ring: VringConfig, host_address: Callable[[int, int], int]) -> None:
        """Size, base 0, our addresses of its three parts, kick and call eventfds."""
        self.ioctl("VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM,
                    VRING_STATE.pack(ring.index, ring.size))
        self.ioctl("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE, VRING_STATE.pack(ring.index, 0))
        desc = host_address(ring.desc_addr, 16 * ring.size)
        avail = host_address(ring.avail_addr, 6 + 2 * ring.size)
        used = host_address(ring.used_addr, 6 + 8 * ring.size)
        self.ioctl("VHOST_SET_VRING_ADDR", VHOST_SET_VRING_ADDR,
                    VRING_ADDR.pack(ring.index, 0, desc, used, avail, 0))
        self.ioctl("VHOST_SET_VRING_KICK", VHOST_SET_VRING_KICK,
                    VRING_FILE.pack(ring.index, ring.kick_fd))
        self.ioctl("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL,
                    VRING_FILE.pack(ring.index, ring.call_fd))

    def get_vring_base(self, index: int) -> int:
        buffer = bytearray(VRING_STATE.pack(index, 0))
        try:
            fcntl.ioctl(self.fd, VHOST_GET_VRING_BASE, buffer)
        except OSError as exc:
            raise DeviceError(f"{self.name}: VHOST_GET_VRING_BASE refused: {exc.strerror}") \
                from None
        return int(VRING_STATE.unpack(buffer)[1])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_vhost_net(mode: str, name: str) -> int | None:
    """``/dev/vhost-net`` opened for one NIC; None (pyvmm serves the queues) when ``mode``
    is auto and it can't be opened; ConfigError (exit 2) when it is ``on``."""
    if mode == "off":
        return None
    try:
        return os.open(VHOST_NET_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if mode == "auto":
            return None
        how = " (modprobe vhost_net)" if exc.errno == errno.ENOENT else ""
        raise ConfigError(f"--net tap={name},vhost=on: cannot open {VHOST_NET_DEVICE}: "
                          f"{exc.strerror}{how}{SEE_CHECK}") from None


class VhostNet:
    """vhost-net serving one NIC's two rings from ``tap`` (``KernelQueues`` of the device)."""

    def __init__(self, fd: int, tap: Tap, address_of: Callable[[object], int]) -> None:
        self._vhost = VhostIoctls(fd, f"vhost-net for tap {tap.name}")
        self.tap = tap
        self._address_of = address_of
        self._rings: list[int] = []
        try:
            self._vhost.set_owner()
            self.kernel_features = self._vhost.get_features()
        except DeviceError as exc:
            self._vhost.close()
            raise ConfigError(f"--net tap={tap.name}: {exc}") from None

    def offered_features(self) -> int:
        """The virtio-net features the device offers: the rings' (what the kernel serves)
        and the tap's offloads."""
        return self.kernel_features & NET_RING_FEATURES | self.tap.offloads

    def start(self, features: int, memory: GuestMemory, rings: Sequence[VringConfig]) -> None:
        """The negotiated ``features``, the RAM and the rings to the kernel; the tap behind
        each ring."""
        self.tap.set_offloads(features)
        self._vhost.set_features(features & self.kernel_features & ~VHOST_NET_F_VIRTIO_NET_HDR)
        self._vhost.set_mem_table(memory, self._address_of)

        def host_address(guest: int, length: int) -> int:
            for region in memory.regions:
                if region.guest_base <= guest and guest + length <= region.guest_end:
                    return self._address_of(region.buffer) + guest - region.guest_base
            raise DeviceError(f"{self._vhost.name}: a ring at {guest:#x} is outside guest RAM")

        for ring in rings:
            self._vhost.set_vring(ring, host_address)
            self._vhost.ioctl("VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND,
                               VRING_FILE.pack(ring.index, self.tap.fd))
            self._rings.append(ring.index)

    def stop(self) -> None:
        """Detach the tap from each ring and stop it (the driver may then reuse the memory)."""
        rings, self._rings = self._rings, []
        for index in rings:
            self._vhost.ioctl("VHOST_NET_SET_BACKEND", VHOST_NET_SET_BACKEND,
                               VRING_FILE.pack(index, -1))
            self._vhost.get_vring_base(index)

    def close(self) -> None:
        """The kernel stops the rings and its worker when the fd closes."""
        self._rings = []
        self._vhost.close()
