"""virtio-fs (virtio 1.2 section 5.11) whose queues a vhost-user back end serves.

pyvmm keeps what the transport needs (feature bits, the config space with the
tag the guest mounts by, the queue registers); when the driver sets
DRIVER_OK the rings go to the back end (virtiofsd) with their eventfds: the
kick is the queue's ioeventfd (KVM signals it on the driver's notify write)
and the call is the device's irqfd (the back end interrupts the guest
itself), so no request ever passes through Python.  The device knows
nothing of KVM: the machine assembly binds ``kick_fds`` and the call fd.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Protocol, Sequence

from pyvmm.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
                                         VIRTIO_F_VERSION_1, VirtioDevice)
from pyvmm.errors import DeviceError
from pyvmm.limits import FS_TAG_BYTES
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import MemoryRegionFd, VringConfig

VIRTIO_ID_FS = 26
#: tag[36] (UTF-8, NUL-padded, no terminator needed), le32 num_request_queues.
CONFIG = struct.Struct(f"<{FS_TAG_BYTES}sI")
#: Ring size offered; virtiofsd takes up to 1024.
QUEUE_SIZE = 1024
#: Virtio features pyvmm lets through from the back end (split rings only).
PASSED_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_EVENT_IDX) \
    | (1 << VIRTIO_F_INDIRECT_DESC)


class Backend(Protocol):
    """What the device needs of a vhost-user connection (``VhostUserFrontend``)."""

    def start(self, features: int, regions: Sequence[MemoryRegionFd],
              vrings: Sequence[VringConfig], backend_features: int) -> None: ...

    def get_vring_base(self, index: int) -> int: ...


class FsDevice(VirtioDevice):
    """A virtio-fs device: one hiprio queue and ``request_queues`` request queues."""

    device_id = VIRTIO_ID_FS
    backend_interrupts = True

    def __init__(self, backend: Backend, backend_features: int, tag: str,
                 on_failure: Callable[[str], None], request_queues: int = 1) -> None:
        super().__init__((QUEUE_SIZE,) * (1 + request_queues))
        self.tag = tag
        self._tag = tag.encode()
        if not 0 < len(self._tag) <= FS_TAG_BYTES:  # the schema checks users' tags
            raise ValueError(f"a virtio-fs tag is 1 to {FS_TAG_BYTES} bytes, not {tag!r}")
        self._backend = backend
        self._backend_features = backend_features
        self._on_failure = on_failure
        self.request_queues = request_queues
        #: One eventfd per queue: KVM signals it on the driver's notify, the back end reads it.
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        self.call_fd: int | None = None
        self._started: list[int] = []

    def device_features(self) -> int:
        return self._backend_features & PASSED_FEATURES

    def config_space(self) -> bytes:
        return CONFIG.pack(self._tag, self.request_queues)

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        super().activate(memory, driver_features, raise_used, broken)
        if self.call_fd is None:
            raise DeviceError("virtio-fs: no interrupt eventfd bound")
        regions = []
        for region in memory.regions:
            if region.fd is None:
                raise DeviceError("virtio-fs needs guest RAM that can be shared (a memfd)")
            regions.append(MemoryRegionFd(region.guest_base, region.size, region.fd,
                                          region.fd_offset))
        rings = [VringConfig(index, queue.size, queue.desc_addr, queue.avail_addr,
                             queue.used_addr, self.kick_fds[index], self.call_fd)
                 for index, queue in enumerate(self.queues) if queue.ready]
        try:
            self._backend.start(driver_features, regions, rings, self._backend_features)
        except DeviceError as exc:
            self._on_failure(str(exc))
            return
        self._started = [ring.index for ring in rings]

    def process_queue(self, index: int) -> None:
        """A notify that reached us (not KVM's ioeventfd): pass it on to the back end."""
        if self._started:
            os.eventfd_write(self.kick_fds[index], 1)

    def pending(self, index: int) -> bool:
        return False  # the back end owns the rings

    def reset(self) -> None:
        """Stop the back end's rings (GET_VRING_BASE) before the driver reuses them."""
        started, self._started = self._started, []
        try:
            for index in started:
                self._backend.get_vring_base(index)
        except DeviceError as exc:
            self._on_failure(str(exc))
        super().reset()

    def shutdown(self) -> None:
        """The VMM is exiting and the back end with it: no GET_VRING_BASE on the way out."""
        self._started = []

    def close(self) -> None:
        for fd in self.kick_fds:
            os.close(fd)
        self.kick_fds = []
