"""What every virtio device shares: feature bits, queues, activation, reset.

A device knows nothing of the transport or of KVM: the transport calls
``activate`` with guest memory, the negotiated features and a function that
raises the used-buffer interrupt; after that it calls ``process_queue`` when
the driver notifies.  ``serve`` is the common loop: pop chains, let the device
handle each, publish them as used, then interrupt only if the driver wants it
(``VIRTIO_F_EVENT_IDX`` or the ``NO_INTERRUPT`` flag).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from pyvmm.devices.virtio.queue import DescriptorChain, SplitQueue
from pyvmm.memory import GuestMemory

# Feature bits common to all devices (virtio 1.2, section 6).
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

#: What every pyvmm device offers on top of its own features.
COMMON_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC) \
    | (1 << VIRTIO_F_EVENT_IDX)

#: Handles one chain; returns the number of bytes it wrote into the chain.
ChainHandler = Callable[[DescriptorChain], int]
#: Most time one ``serve`` call spends before it returns to the event loop
#: (which then answers --timeout, signals and Ctrl-A x, and comes back).
SERVE_BUDGET_SECONDS = 0.02


class VirtioDevice:
    """Base of the virtio devices; subclasses set ``device_id`` and the queues."""

    device_id = 0
    #: True when another process (a vhost-user back end) raises the used-buffer
    #: interrupt through the irqfd itself: the transport then always reports a
    #: used buffer in InterruptStatus, so the driver looks at its queues.
    backend_interrupts = False

    def __init__(self, queue_sizes: tuple[int, ...]) -> None:
        self.queues = [SplitQueue(size) for size in queue_sizes]
        #: Guards queues and device state: the transport holds it for register
        #: accesses and notifications, the device for work from other sources.
        self.lock = threading.RLock()
        self.memory: GuestMemory | None = None
        self.driver_features = 0
        self._raise_used: Callable[[], None] = lambda: None
        self._broken: Callable[[str], None] = lambda why: None

    # -- what the transport asks --------------------------------------------------

    def device_features(self) -> int:
        """The features this device offers (64 bits)."""
        return COMMON_FEATURES

    def read_config(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` from the device configuration space (zeros past its end)."""
        config = self.config_space()
        chunk = config[offset:offset + len(data)]
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def write_config(self, offset: int, data: bytes | memoryview) -> None:
        """Writable configuration fields; most devices have none."""

    def config_space(self) -> bytes:
        return b""

    @property
    def active(self) -> bool:
        return self.memory is not None

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        """The driver set DRIVER_OK: start serving its queues.

        ``broken(why)`` is for a malformed queue the device finds on its own
        (not in ``process_queue``, whose QueueError the transport catches):
        the transport then sets DEVICE_NEEDS_RESET.
        """
        self.memory = memory
        self.driver_features = driver_features
        self._raise_used = raise_used
        if broken is not None:
            self._broken = broken

    def reset(self) -> None:
        """The driver wrote 0 to the status register: forget everything it set up."""
        for queue in self.queues:
            queue.reset()
        self.memory = None
        self.driver_features = 0
        self._raise_used = lambda: None
        self._broken = lambda why: None

    def to_state(self) -> dict:
        """What the device keeps beyond its queues (the transport saves those); none here."""
        return {}

    def from_state(self, state: dict) -> None:
        """Take ``to_state``'s values (after the transport restored the queues)."""

    def process_queue(self, index: int) -> None:
        """The driver notified queue ``index``."""

    def pending(self, index: int) -> bool:
        """Whether queue ``index`` still has chains that ``process_queue`` left."""
        queue = self.queues[index]
        return self.active and queue.ready and queue.has_available()

    def shutdown(self) -> None:
        """The VMM is exiting: finish or fail what is in flight, make data durable."""

    # -- for subclasses ---------------------------------------------------------------

    def has_feature(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    def serve(self, queue: SplitQueue, handle: ChainHandler) -> int:
        """Handle the available chains of ``queue``; return how many were used.

        At most one queue's worth per call, and no more chains once
        ``SERVE_BUDGET_SECONDS`` are spent, so a driver that keeps adding
        chains (or makes each one slow) can't hold the event loop:
        ``pending`` then says to come back.
        QueueError (a malformed chain) propagates to the transport, which puts
        the device in DEVICE_NEEDS_RESET.
        """
        memory = self.memory
        if memory is None or not queue.ready:
            return 0
        used_before = queue.next_used
        served = 0
        budget_end = time.monotonic() + SERVE_BUDGET_SECONDS
        while True:
            if served >= queue.size or (served and time.monotonic() >= budget_end):
                # Out of budget.  With EVENT_IDX the driver notifies only for a
                # chain at avail_event: publish how far we got, or every chain
                # it adds from now on goes unnoticed (a driver spinning on its
                # buffer, like hvc's, would wait forever).  ``pending`` tells
                # the caller about the chains already there.
                queue.set_avail_event()
                break
            chain = queue.pop(memory)
            if chain is None:
                # With EVENT_IDX, re-check after publishing avail_event: the driver
                # may have added a chain meanwhile without notifying.
                queue.set_avail_event()
                if not queue.has_available():
                    break
                continue
            queue.add_used(chain.head, handle(chain))
            served += 1
        if queue.needs_interrupt(used_before):
            self._raise_used()
        return served
