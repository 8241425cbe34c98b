"""A virtio-mmio transport restored from ``to_state`` into a new device over a copy of
guest RAM serves the driver's queues from where the old one stopped."""

from __future__ import annotations

import json

import pytest

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.console import ConsoleDevice
from pyvmm.devices.virtio.testing import CountingTrigger
from pyvmm.memory import GuestMemory

from tests.unit.devices.virtio.test_virtio_mmio import Driver


def _clone(driver: Driver) -> tuple[mmio.VirtioMmioTransport, list[bytes], CountingTrigger]:
    """A new device and transport on a copy of the driver's RAM, restored from the old."""
    state = json.loads(json.dumps(driver.transport.to_state()))
    memory = GuestMemory.from_bytes(driver.memory.total_size)
    memory.write(0, driver.memory.read(0, driver.memory.total_size))
    output: list[bytes] = []
    irq = CountingTrigger()
    transport = mmio.VirtioMmioTransport(ConsoleDevice(lambda v: output.append(bytes(v))),
                                         memory, irq)
    transport.from_state(state)
    driver.memory, driver.transport = memory, transport
    for queue in driver.queues:
        queue.memory = memory
    return transport, output, irq


def test_a_restored_console_transmits_and_receives_where_it_left_off() -> None:
    d = Driver()
    d.bring_up()
    first = b"before the snapshot\n"
    d.queues[1].add_chain([(d.queues[1].alloc(len(first), first), len(first), False)])
    d.write(mmio.QUEUE_NOTIFY, 1)
    d.device.enqueue_input(b"typed before")     # no receive buffer yet: it waits
    assert d.output == [first]

    transport, output, irq = _clone(d)
    assert d.read(mmio.STATUS) == 0b1111 and transport.device.active
    second = b"after\n"
    d.queues[1].set_used_event(1)              # EVENT_IDX: interrupt once used passes 1
    d.queues[1].add_chain([(d.queues[1].alloc(len(second), second), len(second), False)])
    d.write(mmio.QUEUE_NOTIFY, 1)
    assert output == [second]                  # the first chain is not served again
    assert d.queues[1].used_index() == 2 and irq.count == 1
    buffer = d.queues[0].alloc(64)
    d.queues[0].add_chain([(buffer, 64, True)])
    transport.notify(0)
    assert d.memory.read(buffer, 12) == b"typed before"


def test_state_of_another_device_is_refused() -> None:
    d = Driver()
    d.bring_up()
    state = d.transport.to_state()
    state["device_id"] = 2
    with pytest.raises(ValueError, match="device 2"):
        d.transport.from_state(state)
