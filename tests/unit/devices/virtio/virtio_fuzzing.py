"""A hostile driver for the virtio devices, as hypothesis strategies plus the checks.

A ``World`` is one device (block, console, the ports of command mode, the
entropy device, virtio-net over a stand-in link or over passt's stream (a
socketpair, the frames moved by the C half), virtio-fs with a stand-in
back end: its config space and transport, or virtio-vsock with a stand-in
vhost-vsock: its config space, transport and the event queue it serves) behind
its real virtio-mmio transport, over guest RAM of two ranges with a hole between them (as below and
above the MMIO gap), each range cut from one host buffer between canary bytes.
A run is a list of operations a driver could do, valid or not: MMIO reads and
writes of 1, 2, 4 or 8 bytes anywhere in the window, a full bring-up with any
features and queue layout, random rings (descriptor tables, indirect tables,
block request headers and discard segments, console control messages,
available indices), notifications (by register and by ioeventfd), host input
and its end (for virtio-net: frames arriving, some over the MTU, and the link
filling up and draining; for vsock: a transport-reset event), resets.

``World.check`` holds after every operation: nothing escaped as an exception,
the canaries around guest RAM are intact (nothing outside guest RAM was
written), the disk did not grow, the operation took under ``MAX_SECONDS`` of CPU,
it allocated less than guest RAM (``tracemalloc``: nothing copies a request's
buffers more than once), its output is at most ``TRANSMIT_LIMIT`` per chain
used (no amplification by overlapping descriptors), the entropy device gives
at most ``REQUEST_LIMIT`` bytes per chain used, what the ports
device keeps for the guest (control backlog, input) stays within its bounds, and
virtio-net's link never holds more than it was given.  Used by tests/unit/devices/virtio/test_virtio_fuzz.py (bounded) and
scripts/fuzz_virtio.py (long).
"""

from __future__ import annotations

import fcntl
import gc
import os
import random
import socket
import struct
import tempfile
import termios
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Iterator

from hypothesis import strategies as st

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.block import BlockDevice
from pyvmm.devices.virtio.console import TRANSMIT_LIMIT, ConsoleDevice
from pyvmm.host.disk_image import DiskImage
from pyvmm.devices.virtio.fs import FsDevice
from pyvmm.devices.virtio.net import OFFLOAD_FEATURES, NetDevice, VhostNetDevice
from pyvmm.devices.virtio.ports import (CONTROL, CONTROL_KINDS, INPUT_LIMIT, Port,
                                        PortsDevice)
from pyvmm.devices.virtio.rng import REQUEST_LIMIT, RngDevice
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue
from pyvmm.devices.virtio.vsock import VsockDevice
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost.stream import OUTPUT_LIMIT, READ_CHUNK, FrameStream

RANGE = 256 << 10
#: Guest RAM: [0, 256K) and [1M, 1M + 256K); the hole between is not RAM.
RANGES = ((0, RANGE), (1 << 20, RANGE))
RAM = sum(size for _, size in RANGES)
GUARD = 4096
CANARY = 0xA5
DISK_SECTORS = 64
#: The MAC of the fuzzed NICs (any unicast MAC serves).
GUEST_MAC = bytes.fromhex("525400123456")
#: Where well-formed requests put their buffers: an area per queue from DATA_BASE
#: (64 KiB each, smaller for a device of many queues: all in the first range).
DATA_BASE, DATA_SIZE = 0x10000, 0x10000
#: The kinds of world, and the ports of the ports world (command mode's four).
KINDS = ("block", "console", "ports", "fs", "rng", "net", "usernet", "tapnet", "vhostnet",
         "vsock")
PORT_NAMES = ("stdin", "stdout", "stderr", "status")
#: Longest any one operation may take.
MAX_SECONDS = 1.0
#: Where the strategies like to put rings and buffers (inside RAM, near its edges).
INTERESTING = (0, 0x1000, RANGE - 16, RANGE - 1, RANGE, 1 << 20, (1 << 20) + RANGE - 16,
               (1 << 20) + RANGE, 2**64 - 16)

_DESC = struct.Struct("<QIHH")


class StandInBackend:
    """virtio-fs's vhost-user back end, answering as a healthy one: what is fuzzed
    is the device's config space and the transport in front of it."""

    def __init__(self) -> None:
        self.starts = 0

    def start(self, features, regions, vrings, backend_features) -> None:
        self.starts += 1

    def get_vring_base(self, index: int) -> int:
        return 0


class StandInKernel:
    """vhost-net (``VhostNetDevice``'s rings), answering as a healthy one: what is fuzzed
    is the device's registers and config space and the transport in front of it."""

    def __init__(self) -> None:
        self.started = 0

    def start(self, features, memory, rings) -> None:
        assert self.started == 0, "rings handed over twice without a stop"
        self.started += 1

    def stop(self) -> None:
        assert self.started == 1, "a stop without a start"
        self.started -= 1


class StandInVhostVsock:
    """The kernel's vhost-vsock, accepting any rings (the kernel checks them itself): what
    is fuzzed is the config space, the transport and the event queue pyvmm serves."""

    features = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 1)

    def __init__(self) -> None:
        self.starts = 0

    def start(self, features, memory, rings) -> None:
        self.starts += 1

    def stop(self) -> None:
        pass


class StandInLink:
    """virtio-net's back end: frames for the guest (at most ``HELD``), frames it sent."""

    HELD = 4

    def __init__(self, sink) -> None:
        self.incoming: list[bytes] = []
        self.room = True
        self._sink = sink

    def can_send(self) -> bool:
        return self.room

    def send(self, frame: bytes) -> None:
        assert self.room, "a frame sent to a full link"
        self._sink(memoryview(frame))

    def next_frame(self) -> bytes | None:
        return self.incoming[0] if self.incoming else None

    def consume_frame(self) -> None:
        self.incoming.pop(0)


def data_area(queue_index: int, queue_count: int) -> tuple[int, int]:
    """(base, size) of the buffers of well-formed requests on one queue."""
    size = min(DATA_SIZE, (RANGE - DATA_BASE) // max(queue_count, 1) & ~0xFFF)
    return DATA_BASE + queue_index * size, size


@dataclass
class World:
    kind: str                                   # one of KINDS
    directory: str
    backing: bytearray = field(init=False)
    memory: GuestMemory = field(init=False)
    output_bytes: int = 0
    rings: int = 0                              # notifications made
    live_rings: int = 0                         # of them, to a live device (not broken)
    chains: int = 0                             # chains the device used
    drivers: list[DriverQueue] = field(default_factory=list)
    resets_needed: int = 0                      # times it went to DEVICE_NEEDS_RESET

    def __post_init__(self) -> None:
        self.backing = bytearray([CANARY]) * (GUARD + sum(size + GUARD for _, size in RANGES))
        regions, offset = [], GUARD
        for base, size in RANGES:
            self.backing[offset:offset + size] = bytes(size)
            regions.append(MemoryRegion(base, size, memoryview(self.backing)[offset:offset + size]))
            offset += size + GUARD
        self._memfd = -1
        if self.kind == "fs":  # virtio-fs wants RAM it can share: a memfd to name (unused)
            self._memfd = os.memfd_create("pyvmm-fuzz", os.MFD_CLOEXEC)
            regions = [MemoryRegion(r.guest_base, r.size, r.buffer, fd=self._memfd,
                                    fd_offset=r.guest_base) for r in regions]
        self.memory = GuestMemory(regions)  # type: ignore[arg-type]
        self.disk_path = os.path.join(self.directory, "disk.img")
        with open(self.disk_path, "wb") as stream:
            stream.write(bytes(range(256)) * (DISK_SECTORS * 2))
        self.device: (BlockDevice | ConsoleDevice | PortsDevice | FsDevice | RngDevice
                      | NetDevice | VhostNetDevice | VsockDevice)
        self.fs_failures: list[str] = []
        if self.kind == "block":
            self.device = BlockDevice(DiskImage(self.disk_path))
        elif self.kind == "console":
            self.device = ConsoleDevice(self._sink)
        elif self.kind == "rng":
            self.device = RngDevice()
        elif self.kind == "ports":
            self.device = PortsDevice([Port(PORT_NAMES[0])] +
                                      [Port(name, self._sink) for name in PORT_NAMES[1:]])
        elif self.kind == "net":
            self.link = StandInLink(self._sink)
            self.device = NetDevice(self.link, GUEST_MAC, mtu=65520)
        elif self.kind == "usernet":  # passt's stream: a socketpair, the C half
            ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.peer.setblocking(False)
            self.peer_reads = True
            self.peer_buffer = bytearray(64 << 10)
            self.peer_read = self.produced = 0
            self.stream = FrameStream(ours)
            self.device = NetDevice(self.stream, GUEST_MAC, mtu=65520)
        elif self.kind == "tapnet":  # a tap pyvmm serves: frames carry the header, offloads
            self.link = StandInLink(self._sink)
            self.offloads_set: list[int] = []
            self.device = NetDevice(self.link, GUEST_MAC, mtu=1500, header_in_frames=True,
                                    offloads=OFFLOAD_FEATURES,
                                    on_offloads=self.offloads_set.append)
        elif self.kind == "vhostnet":
            self.device = VhostNetDevice(StandInKernel(), (1 << 32) | (1 << 28) | (1 << 29)
                                         | (1 << 15) | OFFLOAD_FEATURES, GUEST_MAC, 1500,
                                         self.fs_failures.append)
            self.device.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        elif self.kind == "vsock":
            self.device = VsockDevice(StandInVhostVsock(), 3, self.fs_failures.append)
            self.device.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self.device = FsDevice(StandInBackend(), (1 << 32) | (1 << 28) | (1 << 29),
                                   "fuzz", self.fs_failures.append)
            self.device.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.transport = mmio.VirtioMmioTransport(self.device, self.memory, CountingTrigger())
        self._used = 0  # chains the device published as used, resets or not
        for queue in self.device.queues:
            add_used = queue.add_used

            def counted(head: int, length: int, add_used=add_used) -> None:
                self._used += 1
                add_used(head, length)
            queue.add_used = counted  # type: ignore[method-assign]

    def _sink(self, view: memoryview) -> None:
        self.output_bytes += len(view)

    def close(self) -> None:
        self.device.reset()
        self.device.shutdown()
        if isinstance(self.device, (FsDevice, VhostNetDevice, VsockDevice)):
            self.device.close()
            assert self.device.call_fd is not None
            os.close(self.device.call_fd)
        if self._memfd >= 0:
            os.close(self._memfd)
        if self.kind == "usernet":
            self.stream.close()
            self.peer.close()

    # -- operations ---------------------------------------------------------------

    def apply(self, op: tuple) -> None:
        kind, *args = op
        before = [queue.next_used for queue in self.device.queues]
        getattr(self, "_op_" + kind)(*args)
        if self.kind not in ("usernet", "block"):
            return
        # The C halves use chains without SplitQueue.add_used: count them by the index
        # (a reset in this operation sets it back: nothing counted then).
        for queue, used in zip(self.device.queues, before):
            moved = (queue.next_used - used) & 0xFFFF
            self._used += moved if moved <= queue.max_size else 0
        if self.kind != "usernet":
            return
        if self.peer_reads:
            try:  # passt reads what the device sent
                while count := self.peer.recv_into(self.peer_buffer):
                    self.peer_read += count
            except BlockingIOError:
                pass
        # The output of this operation: what the device handed the stream since the
        # last one, read by passt, waiting in the socket or in the stream's buffer.
        waiting = struct.unpack("i", fcntl.ioctl(self.peer, termios.FIONREAD, b"\0" * 4))[0]
        produced = self.peer_read + waiting + self.stream.held_output
        self.output_bytes += produced - self.produced
        self.produced = produced

    def _op_read(self, offset: int, size: int) -> None:
        data = memoryview(bytearray(size))
        self.transport.read(offset, data)

    def _op_write(self, offset: int, size: int, value: int) -> None:
        self.transport.write(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def _op_bring_up(self, features: int, layouts: list[tuple[int, int, int, int]]) -> None:
        w = lambda offset, value: self._op_write(offset, 4, value)  # noqa: E731
        w(mmio.STATUS, 0)
        w(mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER)
        for page in (0, 1):
            w(mmio.DRIVER_FEATURES_SEL, page)
            w(mmio.DRIVER_FEATURES, features >> (32 * page) & 0xFFFFFFFF)
        w(mmio.STATUS, 0b1011)
        for index, (size, desc, avail, used) in enumerate(layouts):
            w(mmio.QUEUE_SEL, index)
            w(mmio.QUEUE_NUM, size)
            for low, address in ((mmio.QUEUE_DESC_LOW, desc), (mmio.QUEUE_DRIVER_LOW, avail),
                                 (mmio.QUEUE_DEVICE_LOW, used)):
                w(low, address & 0xFFFFFFFF)
                w(low + 4, address >> 32 & 0xFFFFFFFF)
            w(mmio.QUEUE_READY, 1)
        w(mmio.STATUS, 0b1111)

    def _op_driver_up(self, features: int) -> None:
        """A well-behaved bring-up, leaving ``self.drivers`` to queue real requests."""
        count = len(self.device.queues)
        for i in range(count):  # fresh rings, as a driver allocates them (zeroed)
            self._poke(0x1000 * (i + 1), bytes(0x1000))
        self.drivers = [DriverQueue(self.memory, 0x1000 * (i + 1), size=16,
                                    data_base=data_area(i, count)[0]) for i in range(count)]
        features &= self.device.device_features()  # what it offers: the bring-up succeeds
        self._op_bring_up(features, [(d.size, d.desc, d.avail, d.used) for d in self.drivers])

    def _op_request(self, queue_index: int, head: bytes, buffers: list[tuple[int, bool]],
                    indirect: bool, fill: int, notify: bool) -> None:
        """A chain as a driver builds it: ``head`` (a block header, segments...), buffers."""
        if not self.drivers:
            return
        driver = self.drivers[queue_index % len(self.drivers)]
        base, size = data_area(queue_index % len(self.drivers), len(self.drivers))
        driver._next_data = base
        chain = [(driver.alloc(len(head), head), len(head), False)] if head else []
        for length, writable in sorted(buffers, key=lambda b: b[1]):  # readable first
            if driver._next_data + length > base + size:
                break  # the queue's data area is full (a driver would not overrun it)
            chain.append((driver.alloc(length, bytes([fill]) * length), length, writable))
        if chain:
            driver.add_chain(chain, indirect=indirect)
        if notify:
            self._op_notify(queue_index % len(self.drivers), False)

    def _op_ring(self, queue_index: int, table: list, heads: list[int], advance: int,
                 blobs: list[tuple[int, bytes]]) -> None:
        """Write descriptors, data (headers, segments) and available entries, as laid out."""
        queues = self.device.queues
        queue = queues[queue_index % len(queues)]
        for address, data in blobs:
            self._poke(address, data)
        for i, entry in enumerate(table):
            self._poke(queue.desc_addr + 16 * i, _DESC.pack(*entry))
        size = max(queue.size, 1)
        for i, head in enumerate(heads):
            self._poke(queue.avail_addr + 4 + 2 * ((queue.next_avail + i) % size),
                       struct.pack("<H", head))
        self._poke(queue.avail_addr + 2, struct.pack("<H", (queue.next_avail + advance) & 0xFFFF))

    def _poke(self, address: int, data: bytes) -> None:
        """A driver's store: only where it is RAM (the guest can't write elsewhere)."""
        if self.memory.contains(address, len(data)):
            self.memory.write(address, data)

    def _op_notify(self, queue_index: int, by_register: bool) -> None:
        self.rings += 1
        status = self.transport.status
        if status & mmio.STATUS_DRIVER_OK and not status & mmio.STATUS_NEEDS_RESET \
                and 0 <= queue_index < len(self.device.queues):
            self.live_rings += 1
        if by_register:
            self._op_write(mmio.QUEUE_NOTIFY, 4, queue_index)
        else:
            while self.transport.notify(queue_index):  # the event loop's way: until done
                self.rings += 1

    def barrage(self, seed: int, count: int) -> Iterator[tuple]:
        """``count`` rings in a row from a seeded generator (cheap to make, as hypothesis's
        are not), as operations each checked on its own: well-formed requests, raw
        descriptor tables and avail indices, notifies by register and by ioeventfd, now
        and then host input or a fresh bring-up (always soon after the device broke)."""
        rng = random.Random(seed)
        queues = len(self.device.queues)

        def rand_address() -> int:
            return rng.choice((rng.choice(INTERESTING), rng.randrange(RAM + (1 << 20)),
                               rng.randrange(1 << 64)))

        def rand_length() -> int:
            return rng.choice((rng.choice((0, 1, 8, 16, 512, 4096, RANGE, 2**32 - 1)),
                               rng.randrange(1 << 32)))

        def rand_head() -> bytes:
            kind = rng.randrange(3)
            if kind == 0:
                return struct.pack("<IIQ", rng.choice((0, 1, 4, 8, 11, 13, rng.randrange(1 << 32))),
                                   0, rng.randrange(DISK_SECTORS + 3))
            if kind == 1:
                return CONTROL.pack(rng.choice((0, 1, 2, 3, 0xFFFFFFFF)), rng.randrange(9),
                                    rng.randrange(2))
            return rng.randbytes(rng.randrange(33))

        for _ in range(count):
            queue_index = rng.randrange(queues)
            roll = rng.random()
            if self.transport.status & mmio.STATUS_NEEDS_RESET and roll < 0.9:
                roll = 0.0  # as Linux does: reset the broken device and start again
            if roll < 0.02:
                yield ("driver_up", rng.choice(((1 << 32) | (1 << 28) | (1 << 29), 1 << 32)))
                continue
            if roll < 0.06:
                yield ("input", rng.randbytes(rng.randrange(64)))
                continue
            if roll < 0.85:
                buffers = [(rng.choice((0, 1, 16, 512, 4096, rng.randrange(8192))),
                            rng.random() < 0.5) for _ in range(rng.randrange(6))]
                yield ("request", queue_index, rand_head(), buffers, rng.random() < 0.3,
                       rng.randrange(256), False)
            else:
                table = [(rand_address(), rand_length(), rng.randrange(8), rng.randrange(20))
                         for _ in range(rng.randrange(1, 12))]
                heads = [rng.randrange(20) for _ in range(rng.randrange(1, 6))]
                yield ("ring", queue_index, table, heads,
                       rng.choice((len(heads), rng.randrange(0x10000))), [])
            yield ("notify", queue_index, rng.random() < 0.3)

    def _op_input(self, data: bytes) -> None:
        if isinstance(self.device, VsockDevice):
            self.device.transport_reset()  # takes an event buffer the driver gave
            return
        if self.kind == "usernet":
            assert isinstance(self.device, NetDevice)
            if not data:  # passt stops reading (the link fills up) or starts again
                self.peer_reads = not self.peer_reads
                if self.peer_reads:
                    self.stream.flush()
                    self.device.link_writable()
                return
            if data[0] & 1:  # a frame the size of the MTU or past it
                data = (data * (65560 // len(data) + 1))[:65520 + data[0] * 4]
            if not data[0] & 2:  # else raw bytes: a length prefix of anything
                data = struct.pack(">I", len(data)) + data
            try:
                self.peer.send(data)
            except BlockingIOError:
                pass
            self.stream.fill()
            self.device.frames_arrived()
            return
        if isinstance(self.device, NetDevice):
            if not data:
                self.link.room = not self.link.room
                if self.link.room:
                    self.device.link_writable()
                return
            if data[0] & 1:  # a frame the size of the MTU or past it
                data = (data * (65560 // len(data) + 1))[:65520 + data[0] * 4]
            if len(self.link.incoming) < StandInLink.HELD:
                self.link.incoming.append(data)
            self.device.frames_arrived()
            return
        if isinstance(self.device, ConsoleDevice):
            self.device.enqueue_input(data)
        elif isinstance(self.device, PortsDevice):
            if data:
                self.device.enqueue_input(0, data)
            else:
                self.device.end_input(0)  # stdin's end of file: PORT_OPEN 0 once delivered

    # -- the properties ---------------------------------------------------------------

    def timed(self, op: tuple) -> None:
        """Apply ``op`` and check every property (AssertionError names the one broken)."""
        if op[0] == "barrage":
            for each in self.barrage(*op[1:]):
                self.timed(each)
            return
        used_before = self._used
        output_before = self.output_bytes
        random_before = self.device.bytes_given if isinstance(self.device, RngDevice) else 0
        broken_before = self.transport.status & mmio.STATUS_NEEDS_RESET
        # The harness's own garbage (thousands of examples) must not be timed as
        # the device's: a full collection inside one operation took over 1 s.
        gc.disable()
        tracemalloc.start()
        start = time.process_time()  # CPU time: a loaded host must not fail the property
        try:
            self.apply(op)
        finally:
            seconds = time.process_time() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            gc.enable()
        chains = self._used - used_before
        self.chains += chains
        if self.transport.status & mmio.STATUS_NEEDS_RESET and not broken_before:
            self.resets_needed += 1
        assert seconds < MAX_SECONDS, f"{op[0]} took {seconds:.2f} s"
        assert peak < RAM, f"{op[0]} allocated {peak} bytes (guest RAM is {RAM})"
        output = self.output_bytes - output_before
        assert output <= chains * TRANSMIT_LIMIT, \
            f"{op[0]} gave {output} bytes of output from {chains} chains"
        if isinstance(self.device, RngDevice):
            given = self.device.bytes_given - random_before
            assert given <= chains * REQUEST_LIMIT, \
                f"{op[0]} gave {given} random bytes to {chains} chains"
        if isinstance(self.device, PortsDevice):
            backlog = len(self.device._control_out)
            assert backlog <= CONTROL_KINDS * len(self.device.ports), \
                f"{backlog} control messages waiting"
            assert all(len(port.pending) <= INPUT_LIMIT for port in self.device.ports)
        if self.kind == "usernet":
            assert self.stream.held_input <= READ_CHUNK + 4 + self.stream.max_frame
            assert self.stream.held_output <= OUTPUT_LIMIT + 65557
        elif isinstance(self.device, NetDevice):
            assert len(self.link.incoming) <= StandInLink.HELD
        self.check()

    def check(self) -> None:
        offset = 0
        for _, size in RANGES:
            guard = self.backing[offset:offset + GUARD]
            assert guard == bytes([CANARY]) * GUARD, "a write outside guest RAM"
            offset += GUARD + size
        assert self.backing[offset:] == bytes([CANARY]) * GUARD, "a write outside guest RAM"
        assert os.path.getsize(self.disk_path) == DISK_SECTORS * 512, "the disk grew"


# -- strategies ------------------------------------------------------------------------

addresses = st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << 20) + RANGE + 64),
                      st.integers(0, 2**64 - 1))
lengths = st.one_of(st.sampled_from([0, 1, 15, 16, 17, 512, 4096, RANGE, 2**32 - 1]),
                    st.integers(0, 2**32 - 1))
descriptor = st.tuples(addresses, lengths, st.integers(0, 7), st.integers(0, 300))
queue_sizes = st.one_of(st.sampled_from([1, 2, 8, 16, 256]), st.integers(0, 2**32 - 1))
layout = st.tuples(queue_sizes, addresses, addresses, addresses)
block_header = st.builds(
    lambda kind, sector: struct.pack("<IIQ", kind, 0, sector),
    st.one_of(st.sampled_from([0, 1, 4, 8, 11, 13]), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, DISK_SECTORS + 2), st.integers(0, 2**64 - 1)))
segments = st.lists(st.builds(lambda s, n, f: struct.pack("<QII", s, n, f),
                              st.integers(0, DISK_SECTORS + 2) | st.integers(0, 2**64 - 1),
                              st.integers(0, 8) | st.integers(0, 2**32 - 1),
                              st.integers(0, 3)),
                    max_size=4).map(b"".join)
#: What a console driver writes on the control queue: {id, event, value} (and a name).
control_message = st.builds(
    lambda port, event, value, name: CONTROL.pack(port, event, value) + name,
    st.one_of(st.integers(0, 5), st.sampled_from([0xFFFFFFFF])),
    st.one_of(st.integers(0, 8), st.integers(0, 0xFFFF)),
    st.one_of(st.integers(0, 1), st.integers(0, 0xFFFF)),
    st.one_of(st.just(b""), st.binary(max_size=8)))
blob = st.tuples(addresses, st.one_of(block_header, segments, control_message,
                                      st.binary(max_size=64)))
offsets = st.one_of(st.sampled_from([0x0, 0x34, 0x38, 0x44, 0x50, 0x60, 0x70, 0xFC, 0x100,
                                     0x104, 0x13C]), st.integers(0, 0xFFF))
features = st.one_of(st.integers(0, 2**64 - 1),
                     st.sampled_from([1 << 32, (1 << 32) | (1 << 28), (1 << 32) | (1 << 29)
                                      | (1 << 28) | (1 << 13) | (1 << 14) | 0x266]))

operations = st.one_of(
    st.tuples(st.just("read"), offsets, st.sampled_from([1, 2, 4, 8])),
    st.tuples(st.just("write"), offsets, st.sampled_from([1, 2, 4, 8]),
              st.integers(0, 2**64 - 1)),
    st.tuples(st.just("bring_up"), features, st.lists(layout, min_size=1, max_size=2)),
    st.tuples(st.just("ring"), st.integers(0, 9), st.lists(descriptor, max_size=12),
              st.lists(st.integers(0, 300), max_size=12), st.integers(0, 0xFFFF),
              st.lists(blob, max_size=4)),
    st.tuples(st.just("notify"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("input"), st.binary(max_size=256)),
)
#: A well-formed start gives the random operations something to break.
good_features = st.sampled_from([(1 << 32) | (1 << 28) | (1 << 13) | (1 << 14),
                                 (1 << 32) | (1 << 29) | (1 << 28) | (1 << 13) | (1 << 14),
                                 1 << 32])
driver_up = st.tuples(st.just("driver_up"), good_features)
request = st.tuples(
    st.just("request"), st.integers(0, 9),
    st.one_of(block_header, segments, control_message, st.binary(max_size=32)),
    st.lists(st.tuples(st.one_of(st.sampled_from([0, 1, 16, 512, 1024, 4096]),
                                 st.integers(0, 8192)), st.booleans()), max_size=18),
    st.booleans(), st.integers(0, 255), st.booleans())
notify = st.tuples(st.just("notify"), st.integers(0, 9), st.booleans())
#: How often each kind of step comes: mostly requests, so chains get deep into the
#: devices, with enough register chaos and re-layouts to break them in every state.
barrage = st.tuples(st.just("barrage"), st.integers(0, 2**32 - 1), st.integers(1, 160))
_MIX = {"request": (request, 6), "random": (operations, 3), "notify": (notify, 1),
        "driver_up": (driver_up, 1), "barrage": (barrage, 4)}
step = st.sampled_from([name for name, (_, weight) in _MIX.items() for _ in range(weight)]) \
    .flatmap(lambda name: _MIX[name][0])
def runs_of(kinds: tuple[str, ...]) -> st.SearchStrategy:
    """Runs of a device of one of ``kinds``: the driver comes up, then up to 30 steps."""
    return st.tuples(
        st.sampled_from(kinds),
        st.tuples(driver_up, st.lists(step, max_size=30))
        .map(lambda start_rest: [start_rest[0], *start_rest[1]]))


runs = runs_of(KINDS)


def run_one(kind: str, ops: list[tuple]) -> World:
    """Run one sequence in a fresh world (checking after each step); return the world."""
    with tempfile.TemporaryDirectory(prefix="pyvmm-fuzz-") as directory:
        world = World(kind, directory)
        try:
            for op in ops:
                world.timed(op)
        finally:
            world.close()
        return world
