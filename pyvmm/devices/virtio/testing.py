"""A driver-side split virtqueue over plain guest memory, for device tests.

It plays the guest driver (as rust-vmm's ``MockSplitQueue``): lays out the
descriptor table and rings, allocates buffers, publishes chains, and reads
back the used ring, so devices are tested with no VM and no /dev/kvm.  A
:class:`CountingTrigger` stands in for the interrupt line a transport raises.
"""

from __future__ import annotations

import struct

from typing import Sequence

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.queue import (VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
                                        VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, SplitQueue)
from pyvmm.memory import GuestMemory

_DESC = struct.Struct("<QIHH")

#: A buffer in a chain: (guest address, length, device-writable).
Buffer = tuple[int, int, bool]


class CountingTrigger:
    """The interrupt input of a transport (``mmio.EdgeTrigger``): counts the edges it gets."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


class DriverQueue:
    """The driver's view of one queue of ``size`` entries at ``base``."""

    def __init__(self, memory: GuestMemory, base: int, size: int = 16,
                 data_base: int | None = None) -> None:
        self.memory = memory
        self.size = size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self._next_data = data_base if data_base is not None else \
            (self.used + 6 + 8 * size + 0xFFF) & ~0xFFF
        self._free_desc = 0
        self._avail_idx = 0
        self._used_seen = 0

    def configure(self, queue: SplitQueue, event_idx: bool = False) -> None:
        """Program ``queue`` as a transport would, and make it ready."""
        queue.size = self.size
        queue.desc_addr, queue.avail_addr, queue.used_addr = self.desc, self.avail, self.used
        queue.activate(self.memory, event_idx)
        queue.ready = True

    def alloc(self, length: int, data: bytes | None = None) -> int:
        """A buffer of ``length`` bytes (filled with ``data``); its guest address."""
        address = self._next_data
        self._next_data = (address + max(length, 1) + 15) & ~15
        if data is not None:
            self.memory.write(address, data)
        return address

    def write_descriptor(self, index: int, addr: int, length: int, flags: int,
                         next_index: int = 0, table: int | None = None) -> None:
        """Raw descriptor write, for building malformed tables on purpose."""
        base = self.desc if table is None else table
        self.memory.write(base + 16 * index, _DESC.pack(addr, length, flags, next_index))

    def add_chain(self, buffers: list[Buffer], indirect: bool = False) -> int:
        """Describe ``buffers`` as one chain, make it available; return its head."""
        if indirect:
            table = self.alloc(16 * len(buffers))
            for i, (addr, length, writable) in enumerate(buffers):
                flags = (VIRTQ_DESC_F_WRITE if writable else 0) | \
                    (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0)
                self.write_descriptor(i, addr, length, flags, i + 1, table=table)
            head = self._take_descriptors(1)[0]
            self.write_descriptor(head, table, 16 * len(buffers), VIRTQ_DESC_F_INDIRECT)
        else:
            indices = self._take_descriptors(len(buffers))
            for i, (addr, length, writable) in enumerate(buffers):
                last = i + 1 == len(buffers)
                flags = (VIRTQ_DESC_F_WRITE if writable else 0) | \
                    (0 if last else VIRTQ_DESC_F_NEXT)
                self.write_descriptor(indices[i], addr, length, flags,
                                      0 if last else indices[i + 1])
            head = indices[0]
        self.make_available(head)
        return head

    def _take_descriptors(self, count: int) -> list[int]:
        indices = [(self._free_desc + i) % self.size for i in range(count)]
        self._free_desc = (self._free_desc + count) % self.size
        return indices

    def make_available(self, head: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * (self._avail_idx % self.size), head)
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self._avail_idx)

    def set_avail_index(self, value: int) -> None:
        self.memory.write_u16(self.avail + 2, value)

    def suppress_interrupts(self, suppress: bool = True) -> None:
        self.memory.write_u16(self.avail, VIRTQ_AVAIL_F_NO_INTERRUPT if suppress else 0)

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used + 4 + 8 * self.size)

    def used_index(self) -> int:
        return self.memory.read_u16(self.used + 2)

    def take_used(self) -> list[tuple[int, int]]:
        """New (head, length) entries of the used ring since the last call."""
        entries = []
        index = self.used_index()
        while self._used_seen != index:
            slot = self.used + 4 + 8 * (self._used_seen % self.size)
            entries.append((self.memory.read_u32(slot), self.memory.read_u32(slot + 4)))
            self._used_seen = (self._used_seen + 1) & 0xFFFF
        return entries


class MmioDriver:
    """Plays Linux's virtio_mmio driver against a transport, through its registers:
    the one copy of the negotiation and queue set-up sequence the device tests share."""

    def __init__(self, transport: mmio.VirtioMmioTransport) -> None:
        self.transport = transport

    def read(self, offset: int, size: int = 4) -> int:
        data = memoryview(bytearray(size))
        self.transport.read(offset, data)
        return int.from_bytes(data, "little")

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.transport.write(offset, value.to_bytes(size, "little"))

    def features(self) -> int:
        """The device's 64 feature bits, read a 32-bit page at a time."""
        result = 0
        for page in (0, 1):
            self.write(mmio.DEVICE_FEATURES_SEL, page)
            result |= self.read(mmio.DEVICE_FEATURES) << (32 * page)
        return result

    def bring_up(self, queues: Sequence[DriverQueue], features: int | None = None) -> int:
        """Reset, negotiate ``features`` (all offered when None), set up ``queues`` in
        order and set DRIVER_OK; returns the features accepted."""
        self.write(mmio.STATUS, 0)
        self.write(mmio.STATUS, mmio.STATUS_ACKNOWLEDGE)
        self.write(mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER)
        wanted = self.features() if features is None else features
        for page in (0, 1):
            self.write(mmio.DRIVER_FEATURES_SEL, page)
            self.write(mmio.DRIVER_FEATURES, wanted >> (32 * page) & 0xFFFFFFFF)
        self.write(mmio.STATUS, 0b1011)
        assert self.read(mmio.STATUS) & mmio.STATUS_FEATURES_OK
        for index, queue in enumerate(queues):
            self.write(mmio.QUEUE_SEL, index)
            assert self.read(mmio.QUEUE_NUM_MAX) >= queue.size
            self.write(mmio.QUEUE_NUM, queue.size)
            for low, value in ((mmio.QUEUE_DESC_LOW, queue.desc),
                               (mmio.QUEUE_DRIVER_LOW, queue.avail),
                               (mmio.QUEUE_DEVICE_LOW, queue.used)):
                self.write(low, value & 0xFFFFFFFF)
                self.write(low + 4, value >> 32)
            self.write(mmio.QUEUE_READY, 1)
            assert self.read(mmio.QUEUE_READY) == 1
        self.write(mmio.STATUS, 0b1111)
        return wanted
