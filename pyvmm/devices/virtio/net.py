"""virtio-net (virtio 1.2 section 5.1): one receive/transmit queue pair, frames to a back end.

Every buffer starts with the 12-byte ``virtio_net_hdr`` of virtio 1.x (flags,
gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers).  With
``VIRTIO_NET_F_MRG_RXBUF`` a received frame spans as many receive chains as
it needs.  A back end carrying plain Ethernet frames (passt's stream socket)
gets no offloads: the driver computes checksums and segments itself, and
every header we write is zero but for ``num_buffers`` and, over passt's
stream, ``DATA_VALID`` (``VIRTIO_NET_F_GUEST_CSUM``: passt computed the
checksums of every frame it builds, so the guest need not check them).  A back end whose
frames carry the header too (a tap with ``IFF_VNET_HDR``, ``header_in_frames``)
offers checksum and TCP segmentation offload both ways (``offloads``): the
driver's header goes to the tap as it is, the tap's to the driver with
``num_buffers`` set, and ``on_offloads`` tells the back end what the driver
takes (``TUNSETOFFLOAD``).

Nothing is buffered without bound.  Received frames stay in the back end
(``FrameLink.next_frame`` is the one it holds) while the driver has no
receive buffers, and the back end stops reading its socket: back-pressure
goes to the peer.  Transmit chains stay on the ring while the back end's
output is full (``can_send``), and are taken again when it drains.  A frame
larger than the negotiated size (MTU + Ethernet and VLAN headers; 64 KiB for
a segmentation-offloaded one), either way, is dropped and counted.  The
device knows nothing of KVM or of the event loop: the machine calls
``frames_arrived`` and ``link_writable`` when the back end's socket is ready.

Over passt's stream (a ``FrameStream`` link) the frames never pass through
Python: ``_RingPump`` hands the rings and guest RAM to the stream's C half
(``pyvmm/vhost/_stream_build.py``), which moves every ready frame per call.
In the machine the NIC is served like a vhost back end: its ``kick_fds``
become KVM's ioeventfds, ``call_fd`` its irqfd, and a thread of its own runs
the C loop (GIL released), so a frame costs no Python at all; without them
(tests, the fuzzer) each notification and each arrival runs the C half once.

``VhostNetDevice`` is the same NIC with its queues served by the host
kernel's vhost-net: pyvmm keeps the registers and the config space, the
kernel moves the frames (``device.KernelVhostDevice``).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Callable, Protocol

from pyvmm.devices.virtio.device import (COMMON_FEATURES, SERVE_BUDGET_SECONDS, CServedDevice,
                                         KernelQueues, KernelVhostDevice)
from pyvmm.devices.virtio.queue import (CServingLoop, DescriptorChain, QueueError, SplitQueue,
                                        read_from)
from pyvmm.memory import GuestMemory
from pyvmm.vhost.stream import FrameStream, c_module

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1
#: Checksum and TCP segmentation offload, both ways: what a tap can take (no UFO/USO).
OFFLOAD_FEATURES = sum(1 << bit for bit in (
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN))
#: virtio_net_hdr flags and gso types.
HDR_F_NEEDS_CSUM = 1
HDR_F_DATA_VALID = 2
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6 = 0, 1, 3, 4
GSO_ECN = 0x80
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
#: The largest segmentation-offloaded frame: a 64 KiB IP packet and its link headers.
MAX_GSO_FRAME = 65535 + FRAME_OVERHEAD
#: Which feature lets a gso type through, sent by the driver (HOST_*) or to it (GUEST_*).
_GSO_FEATURES = {GSO_TCPV4: (VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_TSO4),
                 GSO_TCPV6: (VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_GUEST_TSO6)}
#: What became of one received frame (``NetDevice._put_frame``).
_DELIVERED, _DROPPED, _NO_ROOM = range(3)
#: How long the serving thread holds a transmit completion's interrupt for the receive
#: interrupt that usually follows to carry it (one interrupt per round trip, not two).
TX_INTERRUPT_HOLD_NS = 1_000_000
#: What a pass of the C half reports (its PYVMM_NET_* bits).
_PUMP_INTERRUPT, _PUMP_MORE, _PUMP_ERROR = 1, 2, 4


class FrameLink(Protocol):
    """A back end carrying whole Ethernet frames (``pyvmm.vhost.stream.FrameStream``), or
    each frame after its virtio_net_hdr (``pyvmm.vhost.tap.TapLink``, ``header_in_frames``)."""

    def can_send(self) -> bool:
        """Whether ``send`` takes a frame now (the back end's output has room)."""

    def send(self, frame: bytes) -> None:
        """Queue one frame for the peer."""

    def next_frame(self) -> bytes | None:
        """The oldest received frame, kept until ``consume_frame``; None if none is whole yet."""

    def consume_frame(self) -> None:
        """That frame is delivered (or dropped): the back end may read the next one."""


class NetDevice(CServedDevice):
    """A virtio-net NIC whose frames go to and come from ``link``."""

    device_id = VIRTIO_ID_NET
    thread_name = "virtio-net"

    def __init__(self, link: FrameLink, mac: bytes, mtu: int = 1500, *,
                 header_in_frames: bool = False, offloads: int = 0,
                 on_offloads: Callable[[int], None] | None = None) -> None:
        if len(mac) != 6 or not 68 <= mtu <= MAX_MTU:
            raise ValueError(f"virtio-net: bad MAC {mac.hex(':')} or MTU {mtu}")
        if offloads & ~OFFLOAD_FEATURES or offloads and not header_in_frames:
            raise ValueError("virtio-net: offloads need a link that carries the header")
        self.max_frame = mtu + FRAME_OVERHEAD
        #: Over passt's stream: the C half that moves the frames (no Python per frame).
        self._pump = _RingPump(link, self.max_frame) \
            if isinstance(link, FrameStream) and not header_in_frames else None
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), self._pump)
        self.link = link
        self.mac = mac
        self.mtu = mtu
        self.header_in_frames = header_in_frames
        self.offloads = offloads
        self._on_offloads = on_offloads
        #: Frames dropped: larger than max_frame (received, transmitted), received
        #: while the driver was not running, transmitted with a header we can't honour.
        self.rx_oversize = 0
        self.tx_oversize = 0
        self.rx_inactive = 0
        self.rx_bad_header = 0
        self.tx_bad_header = 0
        self.rx_frames = 0
        self.tx_frames = 0
        #: A receive ring was malformed outside a notification: drop input until reset.
        self._receive_broken = False

    # -- what the transport asks ---------------------------------------------------------

    def device_features(self) -> int:
        # Over passt's stream: GUEST_CSUM, so received frames can say their checksums
        # are valid (passt computed every one it builds; its own vhost-user path marks
        # them so) and the guest skips verifying them.
        valid_sums = 1 << VIRTIO_NET_F_GUEST_CSUM if self._pump is not None else 0
        return COMMON_FEATURES | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS \
            | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_NET_F_MTU | self.offloads | valid_sums

    @property
    def frame_counts(self) -> dict[str, int]:
        """Frames moved and dropped, by kind (the C half's counts over passt's stream)."""
        names = ("rx_frames", "tx_frames", "rx_oversize", "tx_oversize", "tx_bad_header",
                 "rx_inactive", "rx_bad_header")
        counts = {name: getattr(self, name) for name in names}
        if self._pump is not None:
            counts.update(self._pump.counts())
        return counts

    def config_space(self) -> bytes:
        return CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1, self.mtu)

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        super().activate(memory, driver_features, raise_used, broken)
        self._receive_broken = False
        if self._on_offloads is not None:
            self._on_offloads(driver_features & self.offloads)
        if self._pump is not None:
            self._pump.load(memory, self.queues,
                            self.has_feature(VIRTIO_NET_F_MRG_RXBUF),
                            self.has_feature(VIRTIO_NET_F_GUEST_CSUM))
            self._start_thread_if_bound()

    def reset(self) -> None:
        super().reset()
        self._receive_broken = False
        if self._pump is not None:
            self._pump.unbind()

    # -- the serving thread (the machine's NIC over passt) ------------------------------------

    def _serving_moved(self, to_thread: bool) -> None:
        """The thread polls passt's socket itself: the event loop leaves it alone."""
        assert isinstance(self.link, FrameStream)
        self.link.served_elsewhere = to_thread
        self.link.interest_changed()

    def _serving_failed(self, error: str) -> None:
        self._receive_broken = True
        super()._serving_failed(error)

    def process_queue(self, index: int) -> None:
        if self._pump is not None:
            if self._kick_thread(index):
                return
            try:
                self._pump_call(index == TRANSMIT_QUEUE)
            except QueueError:
                if index == RECEIVE_QUEUE:
                    self._receive_broken = True
                raise
            return
        if index == TRANSMIT_QUEUE:
            self._transmit()
        elif index == RECEIVE_QUEUE:
            try:
                self._receive()
            except QueueError:
                self._receive_broken = True  # the transport sets DEVICE_NEEDS_RESET
                raise

    def pending(self, index: int) -> bool:
        # Receive buffers wait for frames; transmit chains wait while the link is full
        # (for the C half: while anything waits for passt's socket).
        if self.serving:
            return False  # the thread serves them
        if index != TRANSMIT_QUEUE or not super().pending(index):
            return False
        if self._pump is not None:
            return self._pump.can_transmit()
        return self.link.can_send()

    def _pump_call(self, transmit: bool) -> bool:
        """One pass of the C half over one queue (raises QueueError for a bad ring);
        True if it stopped with work left."""
        assert self._pump is not None and isinstance(self.link, FrameStream)
        if self.memory is None:
            return False
        status, error = self._pump.run(transmit)
        self.link.interest_changed()
        if status & _PUMP_INTERRUPT:
            self._raise_used()
        if error is not None:
            raise QueueError(error)
        return bool(status & _PUMP_MORE)

    # -- the back end's events (the machine's event loop) ---------------------------------

    def frames_arrived(self) -> bool:
        """The link has received frames: deliver what the receive ring takes.

        Returns True when the time budget ran out with frames and buffers both
        left: the caller should come back after its other events.
        """
        with self.lock:
            if self.serving:
                return False
            if self._receive_broken or not self._running():
                self._drop_input()
                return False
            try:
                if self._pump is not None:
                    return self._pump_call(transmit=False)
                return self._receive()
            except QueueError as exc:
                self._receive_broken = True
                self._drop_input()
                self._broken(str(exc))  # the transport sets DEVICE_NEEDS_RESET
                return False

    def link_writable(self) -> bool:
        """The link's output drained: take the transmit chains left on the ring."""
        with self.lock:
            if not self._running() or self.serving:
                return False
            try:
                if self._pump is not None:
                    return self._pump_call(transmit=True)
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
        if length > MAX_GSO_FRAME or length > self.max_frame and not \
                self.offloads & (1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6):
            self._tx_too_long(length)
            return
        data = read_from(chain.readable, HEADER.size + length)
        flags, gso_type = data[0], data[1]
        if not self.header_in_frames:
            if gso_type:  # segmentation we never offered: the frame is not a frame
                self.tx_bad_header += 1
                return
            # NEEDS_CSUM can't be set without VIRTIO_NET_F_CSUM; ignored as QEMU does
            self.link.send(data[HEADER.size:])
            self.tx_frames += 1
            return
        if not self._header_allowed(flags, gso_type, host=True):
            self.tx_bad_header += 1
            return
        if length > self.max_frame and gso_type == GSO_NONE:
            self._tx_too_long(length)
            return
        self.link.send(data)  # the tap reads the header as the driver wrote it
        self.tx_frames += 1

    def _tx_too_long(self, length: int) -> None:
        if not self.tx_oversize:
            log.warning("virtio-net: a %d-byte frame from the guest was dropped (the "
                        "largest is %d)", length, self.max_frame)
        self.tx_oversize += 1

    def _header_allowed(self, flags: int, gso_type: int, host: bool) -> bool:
        """Whether the features negotiated let a header with ``flags`` and ``gso_type``
        through: from the driver (``host``, HOST_* and CSUM) or to it (GUEST_*)."""
        csum = VIRTIO_NET_F_CSUM if host else VIRTIO_NET_F_GUEST_CSUM
        if flags & HDR_F_NEEDS_CSUM and not self.has_feature(csum):
            return False
        kind = gso_type & ~GSO_ECN
        if kind == GSO_NONE:
            return not gso_type & GSO_ECN
        features = _GSO_FEATURES.get(kind)
        if features is None or not self.has_feature(features[0 if host else 1]):
            return False
        ecn = VIRTIO_NET_F_HOST_ECN if host else VIRTIO_NET_F_GUEST_ECN
        return not gso_type & GSO_ECN or self.has_feature(ecn)

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
            header, payload = self._split_received(frame)
            if header is None:
                self.link.consume_frame()
                continue
            outcome = self._put_frame(queue, memory, header, payload)
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

    def _split_received(self, frame: bytes) -> tuple[bytes | None, memoryview]:
        """The first 10 bytes of the header the driver gets and the frame after it, or
        (None, _) for a frame dropped (and counted) here."""
        if not self.header_in_frames:
            header: bytes | None = bytes(HEADER.size - 2)
            payload = memoryview(frame)
            gso_type = GSO_NONE
        elif len(frame) < HEADER.size:
            self.rx_bad_header += 1
            return None, memoryview(frame)
        else:
            flags, gso_type = frame[0], frame[1]
            if not self.has_feature(VIRTIO_NET_F_GUEST_CSUM):
                flags &= ~HDR_F_DATA_VALID  # a driver without GUEST_CSUM gets flags 0
            header = bytes((flags, gso_type)) + frame[2:HEADER.size - 2]
            payload = memoryview(frame)[HEADER.size:]
            if not self._header_allowed(flags, gso_type, host=False):
                self.rx_bad_header += 1
                return None, payload
        limit = self.max_frame if gso_type == GSO_NONE else MAX_GSO_FRAME
        if len(payload) > limit:
            if not self.rx_oversize:
                log.warning("virtio-net: a %d-byte frame for the guest was dropped (the "
                            "largest is %d)", len(payload), limit)
            self.rx_oversize += 1
            return None, payload
        return header, payload

    def _put_frame(self, queue: SplitQueue, memory: GuestMemory, header: bytes,
                   frame: memoryview) -> int:
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
        data = memoryview(header + len(chains).to_bytes(2, "little") + frame)
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


class _RingPump(CServingLoop):
    """The C half of a NIC over passt's stream: its rings, guest RAM and the stream
    as one C struct (``pyvmm_net``), and the passes or the serving loop over it.

    Guest RAM goes over as each region's host address and size, the rings as the
    views ``SplitQueue`` checked when the driver made them ready; the C code
    checks every descriptor against the regions as ``SplitQueue`` does.
    """

    error_bit = _PUMP_ERROR

    def __init__(self, stream: FrameStream, max_frame: int) -> None:
        ffi, self._lib = c_module()
        super().__init__(ffi, ffi.new("pyvmm_net *", {
            "stream": stream.c_stream, "max_frame": max_frame,
            "budget_ns": int(SERVE_BUDGET_SECONDS * 1e9),
            "kick_rx": -1, "kick_tx": -1, "call_fd": -1, "stop_fd": -1}),
            self._lib.pyvmm_net_serve)

    def load(self, memory: GuestMemory, queues: list[SplitQueue], mergeable: bool,
             data_valid: bool) -> None:
        """The driver is up: point C at guest RAM and at the rings that are ready;
        ``data_valid``: mark received frames' checksums valid (GUEST_CSUM negotiated)."""
        c = self.c
        c.mergeable = int(mergeable)
        c.data_valid = int(data_valid)
        self.bind(memory, queues, [c.rx, c.tx], "virtio-net")

    def run(self, transmit: bool) -> tuple[int, str | None]:
        """One pass over the transmit or the receive queue: (PYVMM_NET_* bits, error)."""
        if transmit:
            return self.run_pass(self._lib.pyvmm_net_transmit, self.c.tx)
        return self.run_pass(self._lib.pyvmm_net_receive, self.c.rx)

    def can_transmit(self) -> bool:
        """Whether a transmit pass would take chains: the C half leaves them on the ring
        while the stream keeps bytes passt's socket refused."""
        stream = self.c.stream
        return not stream.closed and stream.out_len == 0

    def counts(self) -> dict[str, int]:
        c = self.c
        return {"rx_frames": c.rx_frames, "tx_frames": c.tx_frames,
                "rx_oversize": c.rx_oversize, "tx_oversize": c.tx_oversize,
                "tx_bad_header": c.tx_bad_header, "wakeups": c.wakeups,
                "interrupts": c.interrupts, "tx_interrupts_merged": c.tx_irqs_merged,
                "interrupt_pulse_failures": c.irq.failures}

    def _bind_eventfds(self, kick_fds: list[int], call_fd: int) -> None:
        c = self.c
        c.kick_rx, c.kick_tx = kick_fds[RECEIVE_QUEUE], kick_fds[TRANSMIT_QUEUE]
        c.call_fd = call_fd
        c.tx_irq_hold_ns = TX_INTERRUPT_HOLD_NS


class VhostNetDevice(KernelVhostDevice):
    """A virtio-net NIC whose queues the host kernel's vhost-net serves.

    pyvmm keeps the registers and the config space; the rings, their kick and
    call eventfds go to the kernel (``device.KernelVhostDevice``), so no frame
    passes through Python.  ``features`` are what the kernel and the tap offer
    together.
    """

    device_id = VIRTIO_ID_NET
    backend_name = "vhost-net"
    needs_every_queue = True

    def __init__(self, queues: KernelQueues, features: int, mac: bytes, mtu: int,
                 on_failure: Callable[[str], None]) -> None:
        if len(mac) != 6 or not 68 <= mtu <= MAX_MTU:
            raise ValueError(f"virtio-net: bad MAC {mac.hex(':')} or MTU {mtu}")
        super().__init__((QUEUE_SIZE, QUEUE_SIZE), queues, on_failure)
        self._features = features
        self.mac = mac
        self.mtu = mtu

    def device_features(self) -> int:
        return self._features | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS \
            | 1 << VIRTIO_NET_F_MTU

    def config_space(self) -> bytes:
        return CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1, self.mtu)
