"""virtio-rng, the entropy device (virtio 1.2 section 5.4): the guest's /dev/hwrng.

One request queue; each chain's writable buffers are filled from the host's
``getrandom`` (the kernel's CSPRNG, never blocking once the host has booted)
and given back with the number of bytes written.  A chain gets at most
``REQUEST_LIMIT`` bytes, whatever lengths its descriptors claim, so a guest
can't make one request cost pyvmm more than that in memory or time (Linux
asks for 64 bytes or less at a time); ``serve``'s budget bounds a queue.
"""

from __future__ import annotations

import os
from typing import Callable

from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.queue import DescriptorChain, write_into

VIRTIO_ID_RNG = 4
QUEUE_SIZE = 256
#: Most bytes one chain is given (QEMU's and Firecracker's devices are bounded
#: by a rate limiter instead; a per-request cap needs no timer).
REQUEST_LIMIT = 64 << 10


class RngDevice(VirtioDevice):
    """Random bytes for the guest from ``source(n)`` (``os.getrandom``)."""

    device_id = VIRTIO_ID_RNG

    def __init__(self, source: Callable[[int], bytes] = os.getrandom) -> None:
        super().__init__((QUEUE_SIZE,))
        self._source = source
        #: Bytes handed to the guest, for tests and --stats-like curiosity.
        self.bytes_given = 0

    def process_queue(self, index: int) -> None:
        if index == 0:
            self.serve(self.queues[0], self._fill)

    def _fill(self, chain: DescriptorChain) -> int:
        wanted = min(chain.writable_length, REQUEST_LIMIT)
        if wanted == 0:
            return 0
        written = write_into(chain.writable, self._source(wanted))
        self.bytes_given += written
        return written
