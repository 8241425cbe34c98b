"""virtio-console (virtio 1.2 section 5.3), port 0 only: the guest's /dev/hvc0.

Transmit: each buffer the guest queues goes to the host console whole, as
one write (not byte by byte as a UART).  Receive: host input waits in a
bounded buffer until the guest posts receive buffers, then fills them.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.queue import DescriptorChain, QueueError, write_into

log = logging.getLogger(__name__)

VIRTIO_ID_CONSOLE = 3
RECEIVE_QUEUE = 0
TRANSMIT_QUEUE = 1
QUEUE_SIZE = 256
#: Host input kept while the guest has no receive buffers posted.
INPUT_LIMIT = 64 << 10
#: Most output we take from one transmit chain.  Linux's hvc sends at most a
#: page per buffer; a chain of overlapping huge buffers could otherwise make
#: us write many times guest RAM.  The rest of such a chain is dropped.
TRANSMIT_LIMIT = 1 << 20


class ConsoleDevice(VirtioDevice):
    """hvc0: guest output to ``out``, host input from ``enqueue_input``."""

    device_id = VIRTIO_ID_CONSOLE

    def __init__(self, out: Callable[[memoryview], None]) -> None:
        super().__init__((QUEUE_SIZE, QUEUE_SIZE))
        self._out = out
        self._pending = bytearray()
        self._truncated_once = False
        self._receive_broken = False

    def config_space(self) -> bytes:
        # cols, rows, max_nr_ports, emerg_wr: meaningful only with features we don't offer.
        return bytes(12)

    def process_queue(self, index: int) -> None:
        if index == TRANSMIT_QUEUE:
            self.serve(self.queues[TRANSMIT_QUEUE], self._transmit)
        elif index == RECEIVE_QUEUE:
            self._deliver()

    def pending(self, index: int) -> bool:
        # Posted receive buffers wait for host input, not for us to come back.
        return index == TRANSMIT_QUEUE and super().pending(index)

    def _transmit(self, chain: DescriptorChain) -> int:
        room = TRANSMIT_LIMIT
        for view in chain.readable:
            if len(view) > room:
                if not self._truncated_once:
                    self._truncated_once = True
                    log.warning("virtio-console: a transmit chain of %d bytes was cut to %d",
                                chain.readable_length, TRANSMIT_LIMIT)
                view = view[:room]
            if len(view):
                self._out(view)
                room -= len(view)
        return 0

    # -- host input (main thread) ---------------------------------------------

    def input_room(self) -> int:
        """Bytes of host input we can take now."""
        return INPUT_LIMIT - len(self._pending)

    def enqueue_input(self, data: bytes) -> None:
        """Queue host input for the guest; delivered as receive buffers allow."""
        with self.lock:
            self._pending += data[:max(0, self.input_room())]
            try:
                self._deliver()
            except QueueError as exc:
                self._receive_broken = True  # until the driver resets the device
                self._broken(str(exc))       # the transport sets DEVICE_NEEDS_RESET

    def _deliver(self) -> None:
        queue = self.queues[RECEIVE_QUEUE]
        if not self._pending or not self.active or not queue.ready or self._receive_broken:
            return
        pending = self._pending

        def fill(chain: DescriptorChain) -> int:
            count = write_into(chain.writable, pending)
            del pending[:count]
            return count

        memory = self.memory
        assert memory is not None
        used_before = queue.next_used
        while pending:
            chain = queue.pop(memory)
            if chain is None:
                break
            queue.add_used(chain.head, fill(chain))
        queue.set_avail_event()
        if queue.needs_interrupt(used_before):
            self._raise_used()

    def to_state(self) -> dict:
        """Host input the guest has not taken yet."""
        return {"pending": self._pending.hex()}

    def from_state(self, state: dict) -> None:
        self._pending = bytearray.fromhex(state["pending"])[:INPUT_LIMIT]

    def reset(self) -> None:
        super().reset()
        self._receive_broken = False
        # Input typed before the driver (re)starts is kept for it.
