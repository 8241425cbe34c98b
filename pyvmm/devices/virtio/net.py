"""virtio-net (virtio 1.2 section 5.1): one receive/transmit queue pair, frames to a back end.

Every buffer starts with the 12-byte ``virtio_net_hdr`` of virtio 1.x (flags,
gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers).  The
device offers no checksum or segmentation offload: its back ends (passt's
stream socket, a tap without vnet headers) carry plain Ethernet frames, so
the driver computes checksums and segments itself, and every header we
write is zero but for ``num_buffers``.  With ``VIRTIO_NET_F_MRG_RXBUF`` a
received frame spans as many receive chains as it needs.

Nothing is buffered without bound.  Received frames stay in the back end
(``FrameLink.next_frame`` is the one it holds) while the driver has no
receive buffers, and the back end stops reading its socket: back-pressure
goes to the peer.  Transmit chains stay on the ring while the back end's
output is full (``can_send``), and are taken again when it drains.  A frame
larger than the negotiated size (MTU + Ethernet and VLAN headers), either
way, is dropped and counted.  The device knows nothing of KVM or of the
event loop: the machine calls ``frames_arrived`` and ``link_writable`` when
the back end's socket is ready.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Callable, Protocol

from pyvmm.devices.virtio.device import COMMON_FEATURES, SERVE_BUDGET_SECONDS, VirtioDevice
from pyvmm.devices.virtio.queue import DescriptorChain, QueueError, SplitQueue, read_from
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1
RECEIVE_QUEUE = 0
TRANSMIT_QUEUE = 1
QUEUE_SIZE = 256
#: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers (virtio 1.x).
HEADER = struct.Struct("<BBHHHHH")
#: Config space: mac[6], status, max_virtqueue_pairs, mtu.
CONFIG = struct.Struct("<6sHHH")
#: An Ethernet header with one VLAN tag: what a frame may add to the MTU.
FRAME_OVERHEAD = 14 + 4
#: The largest MTU virtio-net's config space can state (le16), and Linux's ceiling.
MAX_MTU = 65535
#: What became of one received frame (``NetDevice._put_frame``).
_DELIVERED, _DROPPED, _NO_ROOM = range(3)


class FrameLink(Protocol):
    """A back end carrying whole Ethernet frames (``pyvmm.vhost.stream.FrameStream``)."""

    def can_send(self) -> bool:
        """Whether ``send`` takes a frame now (the back end's output has room)."""

    def send(self, frame: bytes) -> None:
        """Queue one frame for the peer."""

    def next_frame(self) -> bytes | None:
        """The oldest received frame, kept until ``consume_frame``; None if none is whole yet."""

    def consume_frame(self) -> None:
        """That frame is delivered (or dropped): the back end may read the next one."""


def default_mac(index: int) -> bytes:
    """QEMU's default MAC for the ``index``-th NIC: 52:54:00:12:34:56, then :57, ..."""
    return bytes((0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF))


class NetDevice(VirtioDevice):
    """A virtio-net NIC whose frames go to and come from ``link``."""

    device_id = VIRTIO_ID_NET

    def __init__(self, link: FrameLink, mac: bytes, mtu: int = 1500) -> None:
        super().__init__((QUEUE_SIZE, QUEUE_SIZE))
        if len(mac) != 6 or not 68 <= mtu <= MAX_MTU:
            raise ValueError(f"virtio-net: bad MAC {mac.hex(':')} or MTU {mtu}")
        self.link = link
        self.mac = mac
        self.mtu = mtu
        self.max_frame = mtu + FRAME_OVERHEAD
        #: Frames dropped: larger than max_frame (received, transmitted), received
        #: while the driver was not running, transmitted with a header we can't honour.
        self.rx_oversize = 0
        self.tx_oversize = 0
        self.rx_inactive = 0
        self.tx_bad_header = 0
        self.rx_frames = 0
        self.tx_frames = 0
        #: A receive ring was malformed outside a notification: drop input until reset.
        self._receive_broken = False

    # -- what the transport asks ---------------------------------------------------------

    def device_features(self) -> int:
        return COMMON_FEATURES | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS \
            | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_NET_F_MTU

    def config_space(self) -> bytes:
        return CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1, self.mtu)

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        super().activate(memory, driver_features, raise_used, broken)
        self._receive_broken = False

    def reset(self) -> None:
        super().reset()
        self._receive_broken = False

    def process_queue(self, index: int) -> None:
        if index == TRANSMIT_QUEUE:
            self._transmit()
        elif index == RECEIVE_QUEUE:
            try:
                self._receive()
            except QueueError:
                self._receive_broken = True  # the transport sets DEVICE_NEEDS_RESET
                raise

    def pending(self, index: int) -> bool:
        # Receive buffers wait for frames; transmit chains wait while the link is full.
        return index == TRANSMIT_QUEUE and self.link.can_send() and super().pending(index)

    # -- the back end's events (the machine's event loop) ---------------------------------

    def frames_arrived(self) -> bool:
        """The link has received frames: deliver what the receive ring takes.

        Returns True when the time budget ran out with frames and buffers both
        left: the caller should come back after its other events.
        """
        with self.lock:
            if self._receive_broken or not self._running():
                self._drop_input()
                return False
            try:
                return self._receive()
            except QueueError as exc:
                self._receive_broken = True
                self._drop_input()
                self._broken(str(exc))  # the transport sets DEVICE_NEEDS_RESET
                return False

    def link_writable(self) -> bool:
        """The link's output drained: take the transmit chains left on the ring."""
        with self.lock:
            if not self._running():
                return False
            try:
                self._transmit()
            except QueueError as exc:
                self._broken(str(exc))
                return False
            return self.pending(TRANSMIT_QUEUE)

    def _running(self) -> bool:
        queue = self.queues[RECEIVE_QUEUE]
        return self.active and queue.ready

    def _drop_input(self) -> None:
        """No driver to take them: frames are dropped, as a NIC whose driver is down does."""
        while self.link.next_frame() is not None:
            self.link.consume_frame()
            self.rx_inactive += 1

    # -- transmit: guest -> link ------------------------------------------------------------

    def _transmit(self) -> None:
        queue = self.queues[TRANSMIT_QUEUE]
        memory = self.memory
        if memory is None or not queue.ready:
            return
        used_before = queue.next_used
        budget_end = time.monotonic() + SERVE_BUDGET_SECONDS
        served = 0
        while served < queue.size and (not served or time.monotonic() < budget_end):
            if not self.link.can_send():
                break  # link_writable brings us back
            chain = queue.pop(memory)
            if chain is None:
                queue.set_avail_event()
                if not queue.has_available():
                    break
                continue
            self._send_chain(chain)
            queue.add_used(chain.head, 0)
            served += 1
        else:
            queue.set_avail_event()
        if queue.needs_interrupt(used_before):
            self._raise_used()

    def _send_chain(self, chain: DescriptorChain) -> None:
        length = chain.readable_length - HEADER.size
        if length < 0:
            self.tx_bad_header += 1
            return
        if length > self.max_frame:
            if not self.tx_oversize:
                log.warning("virtio-net: a %d-byte frame from the guest was dropped (the "
                            "largest is %d)", length, self.max_frame)
            self.tx_oversize += 1
            return
        data = read_from(chain.readable, HEADER.size + length)
        flags, gso_type = data[0], data[1]
        if gso_type:  # segmentation we never offered: the frame is not a frame
            self.tx_bad_header += 1
            return
        del flags  # NEEDS_CSUM can't be set without VIRTIO_NET_F_CSUM; ignored as QEMU does
        self.link.send(data[HEADER.size:])
        self.tx_frames += 1

    # -- receive: link -> guest -------------------------------------------------------------

    def _receive(self) -> bool:
        """Deliver frames while there are both frames and buffers; True if out of time."""
        queue = self.queues[RECEIVE_QUEUE]
        memory = self.memory
        if memory is None or not queue.ready or self._receive_broken:
            return False
        used_before = queue.next_used
        budget_end = time.monotonic() + SERVE_BUDGET_SECONDS
        delivered = 0
        out_of_time = waiting = False
        while True:
            frame = self.link.next_frame()
            if frame is None:
                break
            if delivered >= queue.size or (delivered and time.monotonic() >= budget_end):
                out_of_time = queue.has_available()
                break
            if len(frame) > self.max_frame:
                if not self.rx_oversize:
                    log.warning("virtio-net: a %d-byte frame for the guest was dropped (the "
                                "largest is %d)", len(frame), self.max_frame)
                self.rx_oversize += 1
                self.link.consume_frame()
                continue
            outcome = self._put_frame(queue, memory, frame)
            if outcome == _NO_ROOM:
                # The frame waits in the link, which stops reading its socket.  With
                # EVENT_IDX, ask to hear of the very next buffer (the ones put back
                # are already past avail_event).
                if queue.ask_for_next():
                    continue
                waiting = True
                break
            self.link.consume_frame()
            if outcome == _DELIVERED:
                self.rx_frames += 1
                delivered += 1
        if not waiting:
            queue.set_avail_event()
        if queue.needs_interrupt(used_before):
            self._raise_used()
        return out_of_time

    def _put_frame(self, queue: SplitQueue, memory: GuestMemory, frame: bytes) -> int:
        """Write header and frame over as many chains as it needs: _DELIVERED; _NO_ROOM
        (nothing taken) if the ring holds too little now; _DROPPED if it never can."""
        mergeable = self.has_feature(VIRTIO_NET_F_MRG_RXBUF)
        needed = HEADER.size + len(frame)
        chains: list[DescriptorChain] = []
        room = 0
        while room < needed:
            if chains and not mergeable:
                break
            if len(chains) >= queue.size:
                break
            chain = queue.pop(memory)
            if chain is None:
                break
            if not chain.writable_length:
                raise QueueError("a virtio-net receive chain has no writable buffer")
            chains.append(chain)
            room += chain.writable_length
        if room < needed:
            queue.unpop(len(chains))
            if not mergeable and chains or len(chains) >= queue.size:
                # It will never fit: buffers too small for the negotiated size.
                if not self.rx_oversize:
                    log.warning("virtio-net: a %d-byte frame does not fit the guest's "
                                "receive buffers; dropped", len(frame))
                self.rx_oversize += 1
                return _DROPPED
            return _NO_ROOM
        data = memoryview(HEADER.pack(0, 0, 0, 0, 0, 0, len(chains)) + frame)
        offset = 0
        for chain in chains:
            written = 0
            for view in chain.writable:
                count = min(len(view), len(data) - offset)
                if count <= 0:
                    break
                view[:count] = data[offset:offset + count]
                offset += count
                written += count
            queue.add_used(chain.head, written)
        return _DELIVERED
