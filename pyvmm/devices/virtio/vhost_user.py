"""Virtio devices whose queues a vhost-user back end serves: virtio-fs, vhost-user-blk.

pyvmm keeps what the transport needs (feature bits, the config space, the
queue registers); when the driver sets DRIVER_OK the rings go to the back end
with their eventfds (``device.VhostDevice``, the base it shares with the
kernel's vhost devices), so no request ever passes through Python.  The back
end maps guest RAM itself, from its memfd.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from pyvmm.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
                                         VIRTIO_F_VERSION_1, VhostDevice)
from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import MemoryRegionFd, VringConfig

#: Transport features pyvmm lets through from a back end (split rings only).
RING_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_EVENT_IDX) \
    | (1 << VIRTIO_F_INDIRECT_DESC)


class Backend(Protocol):
    """What a device needs of a vhost-user connection (``VhostUserFrontend``)."""

    def start(self, features: int, regions: Sequence[MemoryRegionFd],
              vrings: Sequence[VringConfig], backend_features: int) -> None: ...

    def get_vring_base(self, index: int) -> int: ...


class VhostUserDevice(VhostDevice):
    """A device of ``queue_sizes`` queues served by ``backend``; subclasses say which
    of the back end's features pass (``passed_features``) and give the config space."""

    backend_name = "vhost-user"
    passed_features = RING_FEATURES

    def __init__(self, queue_sizes: tuple[int, ...], backend: Backend, backend_features: int,
                 on_failure: Callable[[str], None]) -> None:
        super().__init__(queue_sizes, on_failure)
        self._backend = backend
        self._backend_features = backend_features

    def device_features(self) -> int:
        return self._backend_features & self.passed_features

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        if any(region.fd is None for region in memory.regions):
            # pyvmm's own mistake (the machine makes RAM a memfd for these), not the back end's.
            raise DeviceError("a vhost-user device needs guest RAM that can be shared "
                              "(a memfd)")
        super().activate(memory, driver_features, raise_used, broken)

    def _start_backend(self, memory: GuestMemory, driver_features: int,
                       rings: Sequence[VringConfig]) -> None:
        regions = [MemoryRegionFd(region.guest_base, region.size, region.fd, region.fd_offset)
                   for region in memory.regions if region.fd is not None]
        self._backend.start(driver_features, regions, rings, self._backend_features)

    def _stop_backend(self, started: Sequence[int]) -> None:
        """GET_VRING_BASE of each ring (the back end stops it)."""
        for index in started:
            self._backend.get_vring_base(index)


VIRTIO_ID_BLOCK = 2
#: Ring size offered; QEMU's vhost-user-blk server takes up to 1024.
BLOCK_QUEUE_SIZE = 256
#: struct virtio_blk_config up to write_zeroes_may_unmap (virtio 1.2 5.2.4): 60 bytes.
BLOCK_CONFIG_BYTES = 60
#: virtio-blk features passed from the daemon: size_max, seg_max, geometry, ro,
#: blk_size, flush, topology, discard, write zeroes.  Not CONFIG_WCE (the
#: driver would write the config space, which would need SET_CONFIG) nor MQ
#: (one queue).
BLOCK_FEATURES = sum(1 << bit for bit in (1, 2, 4, 5, 6, 9, 10, 13, 14))


class VhostBlockDevice(VhostUserDevice):
    """A virtio-block disk whose requests qemu-storage-daemon serves (vhost-user-blk).

    ``config`` is the daemon's config space (GET_CONFIG: capacity, seg_max,
    blk_size, ...), read once when the device is made: the disk does not
    change size while the guest runs.
    """

    device_id = VIRTIO_ID_BLOCK
    passed_features = RING_FEATURES | BLOCK_FEATURES

    def __init__(self, backend: Backend, backend_features: int, config: bytes,
                 on_failure: Callable[[str], None]) -> None:
        super().__init__((BLOCK_QUEUE_SIZE,), backend, backend_features, on_failure)
        self._config = bytes(config[:BLOCK_CONFIG_BYTES])
        # num_queues (le16 at 34) is 1 whatever the daemon says: we give one queue.
        if len(self._config) >= 36:
            self._config = self._config[:34] + (1).to_bytes(2, "little") + self._config[36:]

    @property
    def capacity(self) -> int:
        """Sectors of 512 bytes, as the guest sees them."""
        return int.from_bytes(self._config[:8], "little")

    def config_space(self) -> bytes:
        return self._config
