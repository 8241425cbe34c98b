"""virtio-net as Linux's virtio_net drives it, over a fake link: headers, mergeable
receive buffers, oversize frames, malformed chains, back-pressure both ways."""

from __future__ import annotations

import struct

import pytest

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.net import (CONFIG, HEADER, QUEUE_SIZE, RECEIVE_QUEUE, TRANSMIT_QUEUE,
                                      VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
                                      VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
                                      VIRTIO_NET_S_LINK_UP, NetDevice)
from pyvmm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue
from pyvmm.memory import GuestMemory

MAC = bytes.fromhex("525400abcdef")
ETH = MAC + bytes.fromhex("525400123456") + b"\x08\x00"


class FakeLink:
    """A back end: frames it has for the guest, frames it was sent, room it has."""

    def __init__(self, frames: list[bytes] | None = None) -> None:
        self.incoming = list(frames or [])
        self.sent: list[bytes] = []
        self.room = True

    def can_send(self) -> bool:
        return self.room

    def send(self, frame: bytes) -> None:
        assert self.room
        self.sent.append(bytes(frame))

    def next_frame(self) -> bytes | None:
        return self.incoming[0] if self.incoming else None

    def consume_frame(self) -> None:
        self.incoming.pop(0)


class Guest:
    """Linux's side: features negotiated, both queues up (16 entries each)."""

    def __init__(self, mergeable: bool = True, mtu: int = 1500, link: FakeLink | None = None,
                 size: int = 16, device: NetDevice | None = None, refused: int = 0) -> None:
        self.memory = GuestMemory.from_bytes(8 << 20)
        self.link = link or FakeLink()
        self.device = device or NetDevice(self.link, MAC, mtu)
        self.interrupts = CountingTrigger()
        self.transport = mmio.VirtioMmioTransport(self.device, self.memory, self.interrupts)
        self.rx = DriverQueue(self.memory, 0x10000, size=size, data_base=0x100000)
        self.tx = DriverQueue(self.memory, 0x20000, size=size, data_base=0x400000)
        self.write(mmio.STATUS, 3)
        offered = self.features()
        wanted = offered if mergeable else offered & ~(1 << VIRTIO_NET_F_MRG_RXBUF)
        wanted &= ~refused
        for page in (0, 1):
            self.write(mmio.DRIVER_FEATURES_SEL, page)
            self.write(mmio.DRIVER_FEATURES, wanted >> (32 * page) & 0xFFFFFFFF)
        self.write(mmio.STATUS, 0b1011)
        for index, queue in ((RECEIVE_QUEUE, self.rx), (TRANSMIT_QUEUE, self.tx)):
            self.write(mmio.QUEUE_SEL, index)
            self.write(mmio.QUEUE_NUM, queue.size)
            self.write(mmio.QUEUE_DESC_LOW, queue.desc)
            self.write(mmio.QUEUE_DRIVER_LOW, queue.avail)
            self.write(mmio.QUEUE_DEVICE_LOW, queue.used)
            self.write(mmio.QUEUE_READY, 1)
        self.write(mmio.STATUS, 0b1111)
        self.rx_buffers: dict[int, tuple[int, int]] = {}

    def features(self) -> int:
        features = 0
        for page in (0, 1):
            self.write(mmio.DEVICE_FEATURES_SEL, page)
            features |= self.read(mmio.DEVICE_FEATURES) << (32 * page)
        return features

    def read(self, offset: int, size: int = 4) -> int:
        data = memoryview(bytearray(size))
        self.transport.read(offset, data)
        return int.from_bytes(data, "little")

    def write(self, offset: int, value: int) -> None:
        self.transport.write(offset, value.to_bytes(4, "little"))

    @property
    def status(self) -> int:
        return self.read(mmio.STATUS)

    def post_rx(self, count: int, size: int = 2048) -> None:
        for _ in range(count):
            address = self.rx.alloc(size)
            head = self.rx.add_chain([(address, size, True)])
            self.rx_buffers[head] = (address, size)
        self.transport.notify(RECEIVE_QUEUE)

    def received(self) -> list[tuple[dict, bytes]]:
        """(header, frame) of each frame the device delivered, merged buffers joined."""
        frames = []
        used = self.rx.take_used()
        while used:
            head, length = used.pop(0)
            address, _ = self.rx_buffers.pop(head)
            data = self.memory.read(address, length)
            fields = dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start",
                               "csum_offset", "num_buffers"), HEADER.unpack_from(data)))
            payload = data[HEADER.size:]
            for _ in range(fields["num_buffers"] - 1):
                head, length = used.pop(0)
                address, _ = self.rx_buffers.pop(head)
                payload += self.memory.read(address, length)
            frames.append((fields, payload))
        return frames

    def transmit(self, frame: bytes, header: bytes | None = None, split: int = 0) -> int:
        data = (header if header is not None else bytes(HEADER.size)) + frame
        if split:
            first = self.tx.alloc(split, data[:split])
            second = self.tx.alloc(len(data) - split, data[split:])
            head = self.tx.add_chain([(first, split, False), (second, len(data) - split, False)])
        else:
            head = self.tx.add_chain([(self.tx.alloc(len(data), data), len(data), False)])
        self.transport.notify(TRANSMIT_QUEUE)
        return head


def frame(size: int, fill: int = 0x5A) -> bytes:
    return ETH + bytes([fill]) * (size - len(ETH))


def test_features_and_config_space() -> None:
    guest = Guest(mtu=65520)
    offered = guest.features()
    for bit in (VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
                32):
        assert offered >> bit & 1
    # No checksum or segmentation offload: CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6, ...
    assert offered & ((1 << 0) | (1 << 1) | (0xFF << 7)) == 0
    config = bytes(guest.read(mmio.CONFIG + i, 1) for i in range(CONFIG.size))
    assert CONFIG.unpack(config) == (MAC, VIRTIO_NET_S_LINK_UP, 1, 65520)


def test_transmit_strips_the_header_and_gathers_the_chain() -> None:
    guest = Guest()
    guest.transmit(frame(60, 1))
    guest.transmit(frame(1514, 2), split=5)  # the header itself split across buffers
    assert guest.link.sent == [frame(60, 1), frame(1514, 2)]
    assert [length for _, length in guest.tx.take_used()] == [0, 0]
    assert guest.interrupts.count >= 1


def test_transmit_drops_and_counts_bad_frames() -> None:
    guest = Guest(mtu=1500)
    guest.transmit(frame(1500 + 18 + 1))                        # over MTU + headers
    guest.transmit(b"", header=bytes(5))                         # shorter than the header
    guest.transmit(frame(60), header=HEADER.pack(0, 1, 0, 0, 0, 0, 0))  # GSO never offered
    guest.transmit(frame(1518))                                  # the largest that fits
    assert guest.link.sent == [frame(1518)]
    assert (guest.device.tx_oversize, guest.device.tx_bad_header) == (1, 2)
    assert len(guest.tx.take_used()) == 4
    assert not guest.status & mmio.STATUS_NEEDS_RESET


def test_receive_writes_a_header_with_num_buffers() -> None:
    guest = Guest(mergeable=False, link=FakeLink([frame(60, 1), frame(1514, 2)]))
    guest.post_rx(4)
    received = guest.received()
    assert [payload for _, payload in received] == [frame(60, 1), frame(1514, 2)]
    assert all(header == {"flags": 0, "gso_type": 0, "hdr_len": 0, "gso_size": 0,
                          "csum_start": 0, "csum_offset": 0, "num_buffers": 1}
               for header, _ in received)


def test_mergeable_buffers_carry_a_64k_frame() -> None:
    big = frame(65520 + 14, 7)
    guest = Guest(mtu=65520, link=FakeLink([big, frame(100, 8)]), size=64)
    guest.post_rx(40, size=1536)  # not enough: 65546 bytes need 43 of them
    assert guest.received() == [] and guest.link.next_frame() == big  # put back, kept
    assert guest.rx.avail_event() == 40  # EVENT_IDX: notify me of the next one
    guest.post_rx(3, size=1536)
    received = guest.received()
    assert len(received) == 1
    assert received[0][0]["num_buffers"] == 43 and received[0][1] == big
    assert guest.link.next_frame() == frame(100, 8)  # waits for buffers
    guest.post_rx(1, size=1536)
    assert [payload for _, payload in guest.received()] == [frame(100, 8)]


def test_no_buffers_holds_the_frame_in_the_link() -> None:
    """Back-pressure: nothing is consumed (or copied) until the guest posts buffers."""
    link = FakeLink([frame(60, n) for n in range(5)])
    guest = Guest(link=link)
    assert guest.device.frames_arrived() is False
    assert len(link.incoming) == 5 and guest.received() == []
    guest.post_rx(2)
    assert len(guest.received()) == 2 and len(link.incoming) == 3
    guest.post_rx(10)
    assert len(guest.received()) == 3 and not link.incoming


def test_a_frame_too_big_for_non_mergeable_buffers_is_dropped_and_counted() -> None:
    link = FakeLink([frame(1514, 1), frame(60, 2)])
    guest = Guest(mergeable=False, link=link)
    guest.post_rx(2, size=512)  # a driver without MRG_RXBUF posting too small buffers
    assert [payload for _, payload in guest.received()] == [frame(60, 2)]
    assert guest.device.rx_oversize == 1


def test_frames_over_the_negotiated_size_are_dropped() -> None:
    link = FakeLink([frame(1500 + 18 + 1), frame(60, 3)])
    guest = Guest(mtu=1500, link=link)
    guest.post_rx(4)
    assert [payload for _, payload in guest.received()] == [frame(60, 3)]
    assert guest.device.rx_oversize == 1


def test_frames_before_the_driver_is_up_are_dropped() -> None:
    link = FakeLink([frame(60)])
    device = NetDevice(link, MAC)
    assert device.frames_arrived() is False
    assert not link.incoming and device.rx_inactive == 1


def test_a_full_link_leaves_transmit_chains_on_the_ring() -> None:
    guest = Guest()
    guest.link.room = False
    guest.transmit(frame(60, 1))
    guest.transmit(frame(60, 2))
    assert guest.link.sent == [] and guest.tx.take_used() == []
    assert guest.device.pending(TRANSMIT_QUEUE) is False  # no busy loop while full
    guest.link.room = True
    assert guest.device.link_writable() is False
    assert guest.link.sent == [frame(60, 1), frame(60, 2)]
    assert len(guest.tx.take_used()) == 2


def test_a_receive_chain_without_writable_buffers_needs_a_reset() -> None:
    guest = Guest(link=FakeLink([frame(60)]))
    address = guest.rx.alloc(64)
    guest.rx.add_chain([(address, 64, False)])
    guest.transport.notify(RECEIVE_QUEUE)
    assert guest.status & mmio.STATUS_NEEDS_RESET


def test_a_malformed_ring_found_by_arriving_frames_needs_a_reset() -> None:
    link = FakeLink()
    guest = Guest(link=link)
    # A looping chain, made available without a notification.
    guest.rx.write_descriptor(0, 0x100000, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    guest.rx.write_descriptor(1, 0x100100, 64, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 0)
    guest.rx.make_available(0)
    link.incoming = [frame(60), frame(61)]
    assert guest.device.frames_arrived() is False
    assert guest.status & mmio.STATUS_NEEDS_RESET
    # Until the driver resets the device, what arrives is dropped, not kept.
    link.incoming = [frame(62)]
    guest.device.frames_arrived()
    assert not link.incoming


def test_receive_stops_at_its_budget() -> None:
    """One call delivers at most a queue's worth; it says to come back."""
    link = FakeLink([frame(60)] * (3 * QUEUE_SIZE))
    guest = Guest(link=link, size=256)
    for _ in range(256):
        address = guest.rx.alloc(2048)
        guest.rx.add_chain([(address, 2048, True)])
    # Fill the ring through arriving frames, not a notification.
    assert guest.device.frames_arrived() is False  # the ring ran out first
    assert len(link.incoming) == 2 * QUEUE_SIZE
    used = guest.rx.take_used()
    assert len(used) == QUEUE_SIZE


def test_config_space_is_read_only() -> None:
    guest = Guest()
    guest.transport.write(mmio.CONFIG, struct.pack("<I", 0))
    assert guest.read(mmio.CONFIG, 1) == MAC[0]


@pytest.mark.parametrize("mac, mtu", [(b"\x52" * 5, 1500), (MAC, 67), (MAC, 65536)])
def test_bad_construction(mac: bytes, mtu: int) -> None:
    with pytest.raises(ValueError):
        NetDevice(FakeLink(), mac, mtu)
