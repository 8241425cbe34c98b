"""The split virtqueue against a mock driver: chains, indirect tables, bad input."""

from __future__ import annotations

import pytest

from pyvmm.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                                        VIRTQ_DESC_F_WRITE, QueueError, SplitQueue)
from pyvmm.devices.virtio.testing import DriverQueue
from pyvmm.memory import GuestMemory

RAM = 1 << 20


@pytest.fixture
def setup():
    memory = GuestMemory.from_bytes(RAM)
    driver = DriverQueue(memory, 0x1000, size=8)
    queue = SplitQueue(max_size=8)
    driver.configure(queue)
    return memory, driver, queue


def test_pop_gives_views_into_guest_memory(setup) -> None:
    memory, driver, queue = setup
    out = driver.alloc(4, b"ping")
    back = driver.alloc(8)
    head = driver.add_chain([(out, 4, False), (back, 8, True)])
    chain = queue.pop(memory)
    assert chain is not None and chain.head == head
    assert [bytes(v) for v in chain.readable] == [b"ping"]
    chain.writable[0][:4] = b"pong"  # a view, not a copy
    assert memory.read(back, 4) == b"pong"
    assert queue.pop(memory) is None


def test_used_ring_and_index(setup) -> None:
    memory, driver, queue = setup
    head = driver.add_chain([(driver.alloc(16), 16, True)])
    chain = queue.pop(memory)
    queue.add_used(chain.head, 16)
    assert driver.take_used() == [(head, 16)]


def test_indirect_chain(setup) -> None:
    memory, driver, queue = setup
    a, b = driver.alloc(3, b"abc"), driver.alloc(5)
    driver.add_chain([(a, 3, False), (b, 5, True)], indirect=True)
    chain = queue.pop(memory)
    assert bytes(chain.readable[0]) == b"abc" and len(chain.writable[0]) == 5


def test_descriptor_outside_ram(setup) -> None:
    memory, driver, queue = setup
    driver.add_chain([(RAM - 4, 16, False)])
    with pytest.raises(QueueError, match="outside guest RAM"):
        queue.pop(memory)


def test_loop_is_detected(setup) -> None:
    memory, driver, queue = setup
    buffer = driver.alloc(8)
    driver.write_descriptor(0, buffer, 8, VIRTQ_DESC_F_NEXT, 1)
    driver.write_descriptor(1, buffer, 8, VIRTQ_DESC_F_NEXT, 0)
    driver.make_available(0)
    with pytest.raises(QueueError, match="longer than"):
        queue.pop(memory)


def test_next_past_the_table(setup) -> None:
    memory, driver, queue = setup
    driver.write_descriptor(0, driver.alloc(8), 8, VIRTQ_DESC_F_NEXT, 200)
    driver.make_available(0)
    with pytest.raises(QueueError, match="past the table"):
        queue.pop(memory)


def test_head_past_the_queue(setup) -> None:
    memory, driver, queue = setup
    driver.make_available(9)
    with pytest.raises(QueueError, match="head 9"):
        queue.pop(memory)


def test_avail_index_running_ahead(setup) -> None:
    memory, driver, queue = setup
    driver.set_avail_index(100)
    with pytest.raises(QueueError, match="ahead"):
        queue.pop(memory)


def test_readable_after_writable(setup) -> None:
    memory, driver, queue = setup
    b = driver.alloc(8)
    driver.write_descriptor(0, b, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    driver.write_descriptor(1, b, 8, 0)
    driver.make_available(0)
    with pytest.raises(QueueError, match="readable descriptor follows"):
        queue.pop(memory)


@pytest.mark.parametrize("length, flags, fragment", [
    (24, VIRTQ_DESC_F_INDIRECT, "multiple of 16"),
    (0, VIRTQ_DESC_F_INDIRECT, "multiple of 16"),
    (16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, "chained indirect"),
])
def test_bad_indirect_tables(setup, length, flags, fragment) -> None:
    memory, driver, queue = setup
    driver.write_descriptor(0, driver.alloc(32), length, flags, 1)
    driver.make_available(0)
    with pytest.raises(QueueError, match=fragment):
        queue.pop(memory)


def test_nested_indirect(setup) -> None:
    memory, driver, queue = setup
    table = driver.alloc(16)
    driver.write_descriptor(0, table, 16, VIRTQ_DESC_F_INDIRECT, table=table)
    driver.write_descriptor(0, table, 16, VIRTQ_DESC_F_INDIRECT)
    driver.make_available(0)
    with pytest.raises(QueueError, match="nested"):
        queue.pop(memory)


def test_indirect_loop(setup) -> None:
    memory, driver, queue = setup
    table = driver.alloc(32)
    buffer = driver.alloc(8)
    driver.write_descriptor(0, buffer, 8, VIRTQ_DESC_F_NEXT, 1, table=table)
    driver.write_descriptor(1, buffer, 8, VIRTQ_DESC_F_NEXT, 0, table=table)
    driver.write_descriptor(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    driver.make_available(0)
    with pytest.raises(QueueError, match="longer than"):
        queue.pop(memory)


@pytest.mark.parametrize("size", [0, 3, 12, 512])
def test_queue_size_must_be_a_power_of_two_within_max(size) -> None:
    memory = GuestMemory.from_bytes(RAM)
    queue = SplitQueue(max_size=256)
    queue.size, queue.desc_addr, queue.avail_addr, queue.used_addr = size, 0, 0x1000, 0x2000
    with pytest.raises(QueueError, match="power of two"):
        queue.activate(memory, False)


def test_rings_outside_ram() -> None:
    queue = SplitQueue(max_size=8)
    queue.size, queue.desc_addr, queue.avail_addr, queue.used_addr = 8, RAM - 16, 0, 0x100
    with pytest.raises(QueueError, match="outside guest RAM"):
        queue.activate(GuestMemory.from_bytes(RAM), False)


def test_interrupt_suppression_flag(setup) -> None:
    memory, driver, queue = setup
    driver.add_chain([(driver.alloc(4), 4, True)])
    chain = queue.pop(memory)
    before = queue.next_used
    queue.add_used(chain.head, 0)
    assert queue.needs_interrupt(before)
    driver.suppress_interrupts()
    assert not queue.needs_interrupt(before)


def test_event_idx_interrupts_only_when_used_event_is_crossed() -> None:
    memory = GuestMemory.from_bytes(RAM)
    driver = DriverQueue(memory, 0x1000, size=8)
    queue = SplitQueue(max_size=8)
    driver.configure(queue, event_idx=True)
    driver.set_used_event(2)  # "interrupt me when entry 2 is used"
    for expected in (False, False, True, False):
        driver.add_chain([(driver.alloc(4), 4, True)])
        chain = queue.pop(memory)
        assert chain is not None
        before = queue.next_used
        queue.add_used(chain.head, 0)
        assert queue.needs_interrupt(before) is expected
    queue.set_avail_event()
    assert driver.avail_event() == 4


def test_a_racing_driver_cannot_hold_the_device_forever() -> None:
    """Each handled chain makes another available: one call still ends, work is left."""
    from pyvmm.devices.virtio.device import COMMON_FEATURES, VirtioDevice

    memory = GuestMemory.from_bytes(RAM)
    driver = DriverQueue(memory, 0x1000, size=8)
    device = VirtioDevice((8,))
    driver.configure(device.queues[0])
    device.activate(memory, COMMON_FEATURES, lambda: None)
    buffer = driver.alloc(4)
    driver.add_chain([(buffer, 4, True)])

    def handle(chain):
        driver.add_chain([(buffer, 4, True)])  # the driver refills at once
        return 0

    assert device.serve(device.queues[0], handle) == 8
    assert device.pending(0)


def test_indirect_table_larger_than_the_queue(setup) -> None:
    """QEMU's limit: a chain has at most queue-size descriptors (here 8), even indirect."""
    memory, driver, queue = setup
    table = driver.alloc(16 * 9)
    for index in range(9):
        driver.write_descriptor(index, driver.alloc(8), 8, VIRTQ_DESC_F_NEXT if index < 8 else 0,
                                index + 1, table=table)
    driver.write_descriptor(0, table, 16 * 9, VIRTQ_DESC_F_INDIRECT)
    driver.make_available(0)
    with pytest.raises(QueueError, match="larger than the queue"):
        queue.pop(memory)


def test_direct_then_indirect_chain_is_bounded_by_the_queue(setup) -> None:
    memory, driver, queue = setup
    table = driver.alloc(16 * 8)
    for index in range(8):
        driver.write_descriptor(index, driver.alloc(8), 8, VIRTQ_DESC_F_NEXT if index < 7 else 0,
                                index + 1, table=table)
    driver.write_descriptor(0, driver.alloc(8), 8, VIRTQ_DESC_F_NEXT, 1)
    driver.write_descriptor(1, table, 16 * 8, VIRTQ_DESC_F_INDIRECT)
    driver.make_available(0)
    with pytest.raises(QueueError, match="longer than the queue"):
        queue.pop(memory)


def test_serve_returns_to_the_loop_after_its_time_budget() -> None:
    """Slow chains: serve stops after its budget and says there is more to do."""
    import time

    from pyvmm.devices.virtio.device import (COMMON_FEATURES, SERVE_BUDGET_SECONDS,
                                             VirtioDevice)

    memory = GuestMemory.from_bytes(RAM)
    device = VirtioDevice((64,))
    driver = DriverQueue(memory, 0x1000, size=64)
    driver.configure(device.queues[0])
    device.activate(memory, COMMON_FEATURES, lambda: None)
    for _ in range(64):
        driver.add_chain([(driver.alloc(8), 8, False)])

    def slow(_chain) -> int:
        time.sleep(0.005)
        return 0
    start = time.monotonic()
    served = device.serve(device.queues[0], slow)
    assert time.monotonic() - start < SERVE_BUDGET_SECONDS + 0.05
    assert 1 <= served < 64 and device.pending(0)
    while device.pending(0):
        served += device.serve(device.queues[0], slow)
    assert served == 64 and len(driver.take_used()) == 64
