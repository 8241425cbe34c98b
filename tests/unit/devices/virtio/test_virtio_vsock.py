"""virtio-vsock over the mmio transport: config space, features, what reaches the kernel's
vhost-vsock (a stand-in here), and the event queue pyvmm serves itself."""

from __future__ import annotations

import os
import struct
from typing import Sequence

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue, MmioDriver
from pyvmm.devices.virtio.vsock import EVENT, QUEUE_SIZE, VIRTIO_ID_VSOCK, VsockDevice
from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import VringConfig

#: What Linux 6.1's vhost-vsock offers: VERSION_1, ACCESS_PLATFORM, EVENT_IDX,
#: INDIRECT_DESC, ANY_LAYOUT, LOG_ALL, SEQPACKET.
KERNEL_FEATURES = (1 << 32) | (1 << 33) | (1 << 29) | (1 << 28) | (1 << 27) | (1 << 26) | 1 << 1


class FakeVhostVsock:
    def __init__(self, fail: str = "") -> None:
        self.features = KERNEL_FEATURES
        self.started: list[tuple[int, GuestMemory, list[VringConfig]]] = []
        self.stops = 0
        self.fail = fail

    def start(self, features: int, memory: GuestMemory, rings: Sequence[VringConfig]) -> None:
        if self.fail:
            raise DeviceError(self.fail)
        self.started.append((features, memory, list(rings)))

    def stop(self) -> None:
        self.stops += 1


def make(backend: FakeVhostVsock, cid: int = 0x1_2345_6789 & 0xFFFF_FFFF):
    memory = GuestMemory.from_bytes(1 << 20)
    failures: list[str] = []
    device = VsockDevice(backend, cid, failures.append)
    device.call_fd = os.eventfd(0, os.EFD_NONBLOCK)
    trigger = CountingTrigger()
    transport = mmio.VirtioMmioTransport(device, memory, trigger)
    return memory, device, transport, failures, trigger


def bring_up(memory, transport) -> list[DriverQueue]:
    queues = [DriverQueue(memory, 0x10000 * (i + 1), size=64) for i in range(3)]
    MmioDriver(transport).bring_up(queues)
    return queues


def close(device: VsockDevice) -> None:
    assert device.call_fd is not None
    os.close(device.call_fd)
    device.close()


def test_config_space_is_the_guests_cid() -> None:
    _, device, transport, _, _ = make(FakeVhostVsock(), cid=0xFFFF_FFFE)
    assert MmioDriver(transport).read(mmio.DEVICE_ID) == VIRTIO_ID_VSOCK == 19
    assert MmioDriver(transport).read(mmio.CONFIG, 4) == 0xFFFF_FFFE
    assert MmioDriver(transport).read(mmio.CONFIG + 4, 4) == 0  # le64: the high half
    assert MmioDriver(transport).read(mmio.QUEUE_NUM_MAX) == QUEUE_SIZE
    config = bytes(MmioDriver(transport).read(mmio.CONFIG + i, 1) for i in range(12))
    assert config == struct.pack("<Q", 0xFFFF_FFFE) + bytes(4)  # zeros past its end
    close(device)


def test_only_split_ring_features_and_seqpacket_are_offered() -> None:
    """Not ACCESS_PLATFORM (no IOMMU here), ANY_LAYOUT (legacy) or LOG_ALL (migration)."""
    _, device, _, _, _ = make(FakeVhostVsock())
    assert device.device_features() == (1 << 32) | (1 << 29) | (1 << 28) | (1 << 1)
    close(device)


def test_driver_ok_hands_rx_and_tx_to_the_kernel_and_keeps_the_event_queue() -> None:
    backend = FakeVhostVsock()
    memory, device, transport, failures, _ = make(backend)
    queues = bring_up(memory, transport)
    assert not failures
    (features, given_memory, rings), = backend.started
    assert features == device.device_features() and given_memory is memory
    assert [(r.index, r.size, r.desc_addr, r.avail_addr, r.used_addr) for r in rings] == [
        (i, 64, q.desc, q.avail, q.used) for i, q in enumerate(queues[:EVENT])]
    assert [r.kick_fd for r in rings] == device.kick_fds[:EVENT]
    assert {r.call_fd for r in rings} == {device.call_fd}
    assert device.loop_queues == (EVENT,)  # its kick comes to us, not to the kernel
    # The kernel raises interrupts itself: InterruptStatus always shows a used buffer.
    assert MmioDriver(transport).read(mmio.INTERRUPT_STATUS) == mmio.INTERRUPT_USED_BUFFER
    # A reset stops the kernel's rings; a second bring-up starts them again.
    MmioDriver(transport).write(mmio.STATUS, 0)
    assert backend.stops == 1
    bring_up(memory, transport)
    assert len(backend.started) == 2
    close(device)


def test_a_kernel_refusing_the_rings_is_reported() -> None:
    memory, device, transport, failures, _ = make(FakeVhostVsock(fail="vhost-vsock: nope"))
    bring_up(memory, transport)
    assert failures == ["vhost-vsock: nope"]
    MmioDriver(transport).write(mmio.STATUS, 0)  # never started: nothing to stop
    close(device)


def test_transport_reset_is_told_on_the_event_queue() -> None:
    memory, device, transport, _, trigger = make(FakeVhostVsock())
    queues = bring_up(memory, transport)
    events = queues[EVENT]
    # No buffer yet: the event waits for one.
    assert not device.transport_reset()
    buffer = events.alloc(4, b"\xff" * 4)
    events.add_chain([(buffer, 4, True)])
    before = trigger.count
    MmioDriver(transport).write(mmio.QUEUE_NOTIFY, EVENT)  # the loop's way (its kick eventfd)
    assert events.take_used() == [(0, 4)]
    assert memory.read(buffer, 4) == struct.pack("<I", 0)  # VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    assert trigger.count == before + 1
    # With a buffer there, an event goes at once; none waits after it.
    buffer = events.alloc(4)
    events.add_chain([(buffer, 4, True)])
    assert device.transport_reset()
    assert events.take_used() == [(1, 4)]
    MmioDriver(transport).write(mmio.QUEUE_NOTIFY, EVENT)
    assert events.take_used() == []
    close(device)


def test_a_malformed_event_chain_needs_a_reset() -> None:
    memory, device, transport, _, _ = make(FakeVhostVsock())
    queues = bring_up(memory, transport)
    events = queues[EVENT]
    events.write_descriptor(0, 0xFFFF_FFFF_0000, 4, 2)  # writable, outside guest RAM
    events.make_available(0)
    assert not device.transport_reset()
    assert MmioDriver(transport).read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET
    close(device)


def test_the_machine_closes_the_kick_eventfds() -> None:
    _, device, _, _, _ = make(FakeVhostVsock())
    fds = list(device.kick_fds)
    assert len(fds) == 3
    close(device)
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} left open")
