"""virtio-vsock (virtio 1.2 section 5.10) whose data rings the host kernel serves.

The receive and transmit queues go to the kernel's vhost-vsock when the
driver sets DRIVER_OK (``pyvmm.vhost.vsock``): the kick is the queue's
ioeventfd, the call the device's irqfd, so connections never pass through
Python.  pyvmm keeps the config space (the guest's CID) and the event
queue, on which it tells the guest its connections are gone
(``VIRTIO_VSOCK_EVENT_TRANSPORT_RESET``).  The rings' lifecycle is
``device.KernelVhostDevice``'s, shared with vhost-net's NIC.
"""

from __future__ import annotations

import struct
from typing import Callable, Protocol

from pyvmm.devices.virtio.device import KernelQueues, KernelVhostDevice
from pyvmm.devices.virtio.queue import QueueError, write_into
from pyvmm.devices.virtio.vhost_user import RING_FEATURES

VIRTIO_ID_VSOCK = 19
RX, TX, EVENT = range(3)
#: Ring size offered (QEMU's vhost-vsock offers 128).
QUEUE_SIZE = 128
#: The device handles SOCK_SEQPACKET too, where the kernel's vhost-vsock does.
VIRTIO_VSOCK_F_SEQPACKET = 1
PASSED_FEATURES = RING_FEATURES | (1 << VIRTIO_VSOCK_F_SEQPACKET)
#: struct virtio_vsock_config: le64 guest_cid.
CONFIG = struct.Struct("<Q")
#: struct virtio_vsock_event: le32 id; the one event there is.
EVENT_MESSAGE = struct.Struct("<I")
EVENT_TRANSPORT_RESET = 0


class VsockBackend(KernelQueues, Protocol):
    """What the device needs of the kernel's vhost-vsock (``VhostVsock``): its rings, and
    the features it offers."""

    features: int


class VsockDevice(KernelVhostDevice):
    """A virtio-vsock device for guest ``guest_cid``: rx and tx in the kernel, events here."""

    device_id = VIRTIO_ID_VSOCK
    backend_name = "vhost-vsock"
    #: rx and tx go to the kernel; the event queue's kick the event loop brings to
    #: ``process_queue`` (its eventfd is never read otherwise: buffers wait for an event).
    backend_queues = EVENT
    loop_queues = (EVENT,)

    def __init__(self, backend: VsockBackend, guest_cid: int,
                 on_failure: Callable[[str], None]) -> None:
        super().__init__((QUEUE_SIZE,) * 3, backend, on_failure)
        self.guest_cid = guest_cid
        self._features = backend.features
        #: Events the guest had no buffer for, told when it gives one (at most one kind).
        self._event_waiting = False

    def device_features(self) -> int:
        return self._features & PASSED_FEATURES

    def config_space(self) -> bytes:
        return CONFIG.pack(self.guest_cid)

    def process_queue(self, index: int) -> None:
        """A notify that reached us, not KVM's ioeventfd: rx/tx go on to the kernel; on the
        event queue a buffer may have come for an event that waits."""
        if index == EVENT:
            if self._event_waiting:
                self.transport_reset()
        else:
            super().process_queue(index)

    def transport_reset(self) -> bool:
        """Tell the guest its vsock connections are gone (after a restore, as QEMU does;
        machines with a vsock can't be snapshotted yet, so nothing sends it today).

        Takes one buffer of the event queue; with none there, the event waits
        for the next.  Returns whether it was delivered.  A malformed chain puts
        the device in DEVICE_NEEDS_RESET, as on any queue.
        """
        with self.lock:
            queue = self.queues[EVENT]
            if self.memory is None or not queue.ready:
                return False
            try:
                chain = queue.pop(self.memory)
                if chain is None:
                    self._event_waiting = True
                    return False
                written = write_into(chain.writable, EVENT_MESSAGE.pack(EVENT_TRANSPORT_RESET))
                queue.add_used(chain.head, written)
            except QueueError as exc:
                self._broken(str(exc))
                return False
            self._event_waiting = False
            self._raise_used()
            return True

    def reset(self) -> None:
        """Forget a waiting event; stop the kernel's rings before the driver reuses them."""
        self._event_waiting = False
        super().reset()
