"""virtio-fs (virtio 1.2 section 5.11) whose queues a vhost-user back end serves.

pyvmm keeps the config space with the tag the guest mounts by; the rings go
to the back end (virtiofsd) as for every vhost-user device
(``pyvmm.devices.virtio.vhost_user``), so no request passes through Python.
"""

from __future__ import annotations

import struct
from typing import Callable

from pyvmm.devices.virtio.vhost_user import RING_FEATURES, Backend, VhostUserDevice
from pyvmm.limits import FS_TAG_BYTES

VIRTIO_ID_FS = 26
#: tag[36] (UTF-8, NUL-padded, no terminator needed), le32 num_request_queues.
CONFIG = struct.Struct(f"<{FS_TAG_BYTES}sI")
#: Ring size offered; virtiofsd takes up to 1024.
QUEUE_SIZE = 1024
#: Virtio features pyvmm lets through from the back end (split rings only).
PASSED_FEATURES = RING_FEATURES

__all__ = ["Backend", "FsDevice", "VIRTIO_ID_FS", "CONFIG", "QUEUE_SIZE", "PASSED_FEATURES"]


class FsDevice(VhostUserDevice):
    """A virtio-fs device: one hiprio queue and ``request_queues`` request queues."""

    device_id = VIRTIO_ID_FS

    def __init__(self, backend: Backend, backend_features: int, tag: str,
                 on_failure: Callable[[str], None], request_queues: int = 1) -> None:
        self._tag = tag.encode()
        if not 0 < len(self._tag) <= FS_TAG_BYTES:  # the schema checks users' tags
            raise ValueError(f"a virtio-fs tag is 1 to {FS_TAG_BYTES} bytes, not {tag!r}")
        super().__init__((QUEUE_SIZE,) * (1 + request_queues), backend, backend_features,
                         on_failure)
        self.tag = tag
        self.request_queues = request_queues

    def config_space(self) -> bytes:
        return CONFIG.pack(self._tag, self.request_queues)
