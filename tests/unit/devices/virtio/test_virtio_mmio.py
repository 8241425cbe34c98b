"""The virtio-mmio transport: register sequences a driver performs, reset, errors."""

from __future__ import annotations

from typing import Sequence

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.console import ConsoleDevice
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue, MmioDriver
from pyvmm.memory import GuestMemory


class Driver(MmioDriver):
    """Linux's virtio_mmio driver against a console device's transport."""

    def __init__(self) -> None:
        self.memory = GuestMemory.from_bytes(1 << 20)
        self.output: list[bytes] = []
        self.device = ConsoleDevice(lambda view: self.output.append(bytes(view)))
        self.irq = CountingTrigger()
        super().__init__(mmio.VirtioMmioTransport(self.device, self.memory, self.irq))
        self.queues = [DriverQueue(self.memory, 0x10000 * (i + 1), size=16) for i in range(2)]

    def bring_up(self, queues: Sequence[DriverQueue] | None = None,
                 features: int | None = None) -> int:
        for index in range(len(self.queues)):
            self.write(mmio.QUEUE_SEL, index)
            assert self.read(mmio.QUEUE_NUM_MAX) == 256
        return super().bring_up(self.queues if queues is None else queues, features)


def test_identification_registers() -> None:
    d = Driver()
    assert d.read(mmio.MAGIC_VALUE) == 0x74726976
    assert d.read(mmio.VERSION) == 2
    assert d.read(mmio.DEVICE_ID) == 3
    assert d.features() >> 32 & 1  # VIRTIO_F_VERSION_1


def test_transmit_through_notify_register() -> None:
    d = Driver()
    d.bring_up()
    text = b"hello from hvc0\n"
    d.queues[1].add_chain([(d.queues[1].alloc(len(text), text), len(text), False)])
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert d.output == [text]
    assert d.irq.count == 1
    assert d.read(mmio.INTERRUPT_STATUS) == mmio.INTERRUPT_USED_BUFFER
    d.write(mmio.INTERRUPT_ACK, mmio.INTERRUPT_USED_BUFFER)
    assert d.read(mmio.INTERRUPT_STATUS) == 0


def test_receive_waits_for_buffers() -> None:
    d = Driver()
    d.bring_up()
    d.device.enqueue_input(b"typed early")
    buffer = d.queues[0].alloc(64)
    d.queues[0].add_chain([(buffer, 64, True)])
    d.transport.notify(0)
    assert d.queues[0].take_used() == [(0, 11)]
    assert d.memory.read(buffer, 11) == b"typed early"


def test_features_without_version_1_are_refused() -> None:
    d = Driver()
    d.write(mmio.STATUS, 3)
    d.write(mmio.DRIVER_FEATURES_SEL, 0)
    d.write(mmio.DRIVER_FEATURES, 0)
    d.write(mmio.STATUS, 0b1011)
    assert not d.read(mmio.STATUS) & mmio.STATUS_FEATURES_OK


def test_reset_forgets_queues_and_features() -> None:
    d = Driver()
    d.bring_up()
    d.write(mmio.STATUS, 0)
    assert d.read(mmio.STATUS) == 0
    d.write(mmio.QUEUE_SEL, 1)
    assert d.read(mmio.QUEUE_READY) == 0
    assert not d.device.active
    # A notify after reset does nothing (no exception, no output).
    d.queues[1].add_chain([(d.queues[1].alloc(1, b"x"), 1, False)])
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert d.output == []
    d.memory.fill(0x10000, 0x30000)  # a new driver starts with zeroed rings
    d.queues = [DriverQueue(d.memory, 0x10000 * (i + 1), size=16) for i in range(2)]
    d.bring_up()  # and the device works again after a fresh set-up
    d.queues[1].add_chain([(d.queues[1].alloc(2, b"ok"), 2, False)])
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert d.output == [b"ok"]


def test_malformed_chain_sets_needs_reset() -> None:
    d = Driver()
    d.bring_up()
    d.queues[1].add_chain([((1 << 20) - 2, 64, False)])  # runs out of RAM
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert d.read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET
    assert d.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE
    assert d.read(mmio.CONFIG_GENERATION) == 1
    d.write(mmio.STATUS, 0)
    assert d.read(mmio.STATUS) == 0


def test_bad_queue_size_sets_needs_reset() -> None:
    d = Driver()
    d.write(mmio.STATUS, 3)
    d.write(mmio.QUEUE_SEL, 0)
    d.write(mmio.QUEUE_NUM, 3)
    d.write(mmio.QUEUE_READY, 1)
    assert d.read(mmio.QUEUE_READY) == 0
    assert d.read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET


def test_odd_accesses_are_harmless() -> None:
    d = Driver()
    assert d.read(mmio.MAGIC_VALUE, size=2) == 0
    d.write(mmio.STATUS, 1, size=1)
    assert d.read(mmio.STATUS) == 0
    d.write(mmio.QUEUE_SEL, 7)
    assert d.read(mmio.QUEUE_NUM_MAX) == 0
    d.write(mmio.QUEUE_READY, 1)  # no such queue: ignored
    assert d.read(0xF00) == 0  # past the config space


def test_config_space_reads_at_any_width() -> None:
    d = Driver()
    assert d.read(mmio.CONFIG, size=1) == 0
    assert d.read(mmio.CONFIG + 4, size=8) == 0


def test_live_queue_layout_cannot_change() -> None:
    d = Driver()
    d.bring_up()
    d.write(mmio.QUEUE_SEL, 1)
    d.write(mmio.QUEUE_DESC_LOW, 0x5000)
    assert d.device.queues[1].desc_addr == d.queues[1].desc


def test_eight_byte_register_reads_are_zeros() -> None:
    """A 64-bit read of a 32-bit register (a hostile or buggy driver) reads zeros."""
    d = Driver()
    d.bring_up()
    for offset in (mmio.MAGIC_VALUE, mmio.STATUS, mmio.QUEUE_DESC_LOW, mmio.INTERRUPT_STATUS):
        assert d.read(offset, size=8) == 0
    assert d.read(mmio.MAGIC_VALUE) == 0x74726976  # and the device still works
    assert d.read(mmio.STATUS) == 0b1111


def test_malformed_receive_chain_with_host_input_sets_needs_reset() -> None:
    d = Driver()
    d.bring_up()
    d.queues[0].add_chain([((1 << 20) - 2, 64, True)])  # runs out of RAM
    d.device.enqueue_input(b"typed")  # from the host side, not a notify
    assert d.read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET
    assert d.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE
    d.device.enqueue_input(b"more")  # the broken queue is left alone
    d.write(mmio.STATUS, 0)
    d.memory.fill(0x10000, 0x30000)
    d.queues = [DriverQueue(d.memory, 0x10000 * (i + 1), size=16) for i in range(2)]
    d.bring_up()
    buffer = d.queues[0].alloc(64)
    d.queues[0].add_chain([(buffer, 64, True)])
    d.transport.notify(0)
    assert d.memory.read(buffer, 9) == b"typedmore"  # kept for the reset driver


def test_transmit_chain_output_is_bounded() -> None:
    """Overlapping huge buffers in one chain can't make us write many times guest RAM."""
    from pyvmm.devices.virtio.console import TRANSMIT_LIMIT

    d = Driver()
    d.bring_up()
    queue = d.queues[1]
    d.queues[1].add_chain([(0, 1 << 19, False)] * 8, indirect=True)  # 4 MiB of 512 KiB
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert sum(map(len, d.output)) == TRANSMIT_LIMIT
    assert queue.take_used() == [(0, 0)]
