"""virtio-vsock (virtio 1.2 section 5.10) whose data rings the host kernel serves.

The receive and transmit queues go to the kernel's vhost-vsock when the
driver sets DRIVER_OK (``pyvmm.vhost.vsock``): the kick is the queue's
ioeventfd, the call the device's irqfd, so connections never pass through
Python.  pyvmm keeps the config space (the guest's CID) and the event
queue, on which it tells the guest its connections are gone
(``VIRTIO_VSOCK_EVENT_TRANSPORT_RESET``).  The device knows nothing of KVM:
the machine assembly binds ``kick_fds`` and ``call_fd``.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Protocol, Sequence

from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.queue import QueueError, write_into
from pyvmm.devices.virtio.vhost_user import RING_FEATURES
from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import VringConfig

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


class VsockBackend(Protocol):
    """What the device needs of the kernel's vhost-vsock (``VhostVsock``)."""

    features: int

    def start(self, features: int, memory: GuestMemory,
              rings: Sequence[VringConfig]) -> None: ...

    def stop(self) -> None: ...


class VsockDevice(VirtioDevice):
    """A virtio-vsock device for guest ``guest_cid``: rx and tx in the kernel, events here."""

    device_id = VIRTIO_ID_VSOCK
    backend_interrupts = True
    #: Queues whose kick the event loop brings to ``process_queue`` (not the kernel's).
    loop_queues = (EVENT,)

    def __init__(self, backend: VsockBackend, guest_cid: int,
                 on_failure: Callable[[str], None]) -> None:
        super().__init__((QUEUE_SIZE,) * 3)
        self.guest_cid = guest_cid
        self._backend = backend
        self._on_failure = on_failure
        #: One eventfd per queue, bound as its ioeventfd: the kernel reads rx's and tx's;
        #: the event queue's is never read (its buffers wait for an event).
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        self.call_fd: int | None = None
        self._started = False
        #: Events the guest had no buffer for, told when it gives one (at most one kind).
        self._event_waiting = False

    def device_features(self) -> int:
        return self._backend.features & PASSED_FEATURES

    def config_space(self) -> bytes:
        return CONFIG.pack(self.guest_cid)

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        super().activate(memory, driver_features, raise_used, broken)
        if self.call_fd is None:
            raise DeviceError("vhost-vsock device: no interrupt eventfd bound")
        rings = [VringConfig(index, queue.size, queue.desc_addr, queue.avail_addr,
                             queue.used_addr, self.kick_fds[index], self.call_fd)
                 for index, queue in enumerate(self.queues[:EVENT]) if queue.ready]
        try:
            self._backend.start(driver_features, memory, rings)
        except DeviceError as exc:
            self._on_failure(str(exc))
            return
        self._started = True

    def process_queue(self, index: int) -> None:
        """A notify that reached us, not KVM's ioeventfd: rx/tx go on to the kernel; on the
        event queue a buffer may have come for an event that waits."""
        if index == EVENT:
            if self._event_waiting:
                self.transport_reset()
        elif self._started and 0 <= index < EVENT:
            os.eventfd_write(self.kick_fds[index], 1)

    def pending(self, index: int) -> bool:
        return False  # the kernel owns rx and tx; events are sent, not served

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
        """Stop the kernel's rings before the driver reuses them."""
        started, self._started = self._started, False
        self._event_waiting = False
        if started:
            try:
                self._backend.stop()
            except DeviceError as exc:
                self._on_failure(str(exc))
        super().reset()

    def shutdown(self) -> None:
        """The VMM is exiting: closing /dev/vhost-vsock stops everything; no ioctl now."""
        self._started = False

    def close(self) -> None:
        for fd in self.kick_fds:
            os.close(fd)
        self.kick_fds = []
