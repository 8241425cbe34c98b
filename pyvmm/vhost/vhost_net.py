"""The host kernel's vhost-net: a tap NIC's queues served in the kernel, not in Python.

``VhostNet`` opens ``/dev/vhost-net`` for one NIC and, when the driver is
ready, hands it the rings and the tap (``VHOST_NET_SET_BACKEND``) through the
kernel's vhost interface (``pyvmm.vhost.kernel``, shared with vhost-vsock); the
kick is KVM's ioeventfd and the call KVM's irqfd, so a frame goes from the
guest's ring to the tap (and back) without waking pyvmm.  The tap supplies the
12-byte virtio_net_hdr itself (``TUNSETVNETHDRSZ``), as QEMU sets it up, and
offloads are the tap's (``Tap.set_offloads``).  ``address_of`` (a buffer's
address) comes from the machine: this module knows nothing of KVM.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Sequence

from pyvmm.errors import SEE_CHECK, ConfigError, DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import VringConfig
from pyvmm.vhost.kernel import KernelVhost
from pyvmm.vhost.tap import Tap

VHOST_NET_DEVICE = "/dev/vhost-net"
#: virtio-net features vhost-net may serve (its own list is longer: logging,
#: ACCESS_PLATFORM, RING_RESET, which pyvmm never offers): indirect descriptors,
#: EVENT_IDX, VERSION_1, mergeable receive buffers.
NET_RING_FEATURES = sum(1 << bit for bit in (28, 29, 32, 15))
#: Bit 27 (VHOST_NET_F_VIRTIO_NET_HDR): vhost would add the header; the tap does.
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27


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
        self._vhost = KernelVhost(fd, f"vhost-net for tap {tap.name}")
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
        ranges = self._vhost.set_mem_table(memory, self._address_of)
        for ring in rings:
            self._vhost.set_vring(ring, ranges)
            self._vhost.set_vring_file("VHOST_NET_SET_BACKEND", ring.index, self.tap.fd)
            self._rings.append(ring.index)

    def stop(self) -> None:
        """Detach the tap from each ring and stop it (the driver may then reuse the memory)."""
        rings, self._rings = self._rings, []
        for index in rings:
            self._vhost.set_vring_file("VHOST_NET_SET_BACKEND", index, -1)
            self._vhost.get_vring_base(index)

    def close(self) -> None:
        """The kernel stops the rings and its worker when the fd closes."""
        self._rings = []
        self._vhost.close()
