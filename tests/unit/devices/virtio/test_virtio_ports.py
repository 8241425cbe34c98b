"""The multiport virtio console as Linux's virtio_console drives it: control handshake,
named ports, binary output per port, input then end of file (PORT_OPEN 0)."""

from __future__ import annotations

import struct
import time
import tracemalloc

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.console import TRANSMIT_LIMIT
from pyvmm.devices.virtio.device import SERVE_BUDGET_SECONDS
from pyvmm.devices.virtio.ports import (CONTROL, CONTROL_KINDS, DEVICE_ADD, DEVICE_READY,
                                        PORT_NAME, PORT_OPEN, PORT_READY, Port, PortsDevice,
                                        queue_indexes)
from pyvmm.errors import describe
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue, MmioDriver
from pyvmm.memory import GuestMemory


class Guest(MmioDriver):
    """Linux's side: queues up, control buffers posted, messages read back."""

    def __init__(self, ports: list[Port]) -> None:
        self.memory = GuestMemory.from_bytes(4 << 20)
        self.device = PortsDevice(ports)
        super().__init__(mmio.VirtioMmioTransport(self.device, self.memory, CountingTrigger()))
        count = len(self.device.queues)
        self.queues = [DriverQueue(self.memory, 0x10000 * (i + 1), size=16) for i in range(count)]
        features = self.bring_up(self.queues)
        assert features >> 1 & 1  # VIRTIO_CONSOLE_F_MULTIPORT
        self.control_buffers: dict[int, int] = {}
        for _ in range(8):
            self.post(2, self.control_buffers, 4096)

    def post(self, queue: int, buffers: dict[int, int], size: int) -> None:
        address = self.queues[queue].alloc(size)
        head = self.queues[queue].add_chain([(address, size, True)])
        buffers[head] = address

    def send_control(self, port: int, event: int, value: int) -> None:
        data = CONTROL.pack(port, event, value)
        queue = self.queues[3]
        queue.add_chain([(queue.alloc(len(data), data), len(data), False)])
        self.write(mmio.QUEUE_NOTIFY, 3)

    def control_received(self) -> list[tuple[int, int, int, bytes]]:
        messages = []
        for head, length in self.queues[2].take_used():
            raw = self.memory.read(self.control_buffers.pop(head), length)
            messages.append(CONTROL.unpack(raw[:8]) + (raw[8:],))
            self.post(2, self.control_buffers, 4096)
        self.write(mmio.QUEUE_NOTIFY, 2)
        return messages


def test_handshake_names_and_opens_every_port() -> None:
    out: list[bytes] = []
    guest = Guest([Port("stdin"), Port("stdout", lambda view: out.append(bytes(view))),
                   Port("stderr", lambda view: out.append(bytes(view)))])
    assert struct.unpack("<HHII", bytes(guest.read(mmio.CONFIG + i) & 0xFF
                                        for i in range(12)))[2] == 3
    guest.send_control(0xFFFFFFFF, DEVICE_READY, 1)
    assert guest.control_received() == [(n, DEVICE_ADD, 0, b"") for n in range(3)]
    for number in range(3):
        guest.send_control(number, PORT_READY, 1)
    assert guest.control_received() == [
        (0, PORT_OPEN, 1, b""), (0, PORT_NAME, 0, b"stdin"),
        (1, PORT_OPEN, 1, b""), (1, PORT_NAME, 0, b"stdout"),
        (2, PORT_OPEN, 1, b""), (2, PORT_NAME, 0, b"stderr")]


def test_output_is_binary_exact_per_port_and_drained_at_shutdown() -> None:
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    guest = Guest([Port("stdin"), Port("stdout", lambda v: stdout.append(bytes(v))),
                   Port("stderr", lambda v: stderr.append(bytes(v)))])
    payload = bytes(range(256)) * 8
    _, transmit = queue_indexes(1)
    queue = guest.queues[transmit]
    queue.add_chain([(queue.alloc(len(payload), payload), len(payload), False)])
    guest.write(mmio.QUEUE_NOTIFY, transmit)
    # Queued but never notified (the guest stopped right after): taken at shutdown.
    _, err_transmit = queue_indexes(2)
    queue = guest.queues[err_transmit]
    queue.add_chain([(queue.alloc(3, b"\r\n\0"), 3, False)])
    assert stderr == []
    guest.transport.shutdown()
    assert b"".join(stdout) == payload
    assert stderr == [b"\r\n\0"]


def test_input_then_end_of_file() -> None:
    guest = Guest([Port("stdin"), Port("stdout", lambda v: None)])
    guest.send_control(0xFFFFFFFF, DEVICE_READY, 1)
    guest.send_control(0, PORT_READY, 1)
    guest.control_received()
    receive, _ = queue_indexes(0)
    buffers: dict[int, int] = {}
    guest.post(receive, buffers, 4)
    guest.device.enqueue_input(0, b"hello")
    guest.device.end_input(0)
    # Linux discards data for a port no process has open: nothing goes before the open.
    assert guest.queues[receive].take_used() == []
    guest.send_control(0, PORT_OPEN, 1)
    (head, length), = guest.queues[receive].take_used()
    assert guest.memory.read(buffers[head], length) == b"hell"
    # Not closed while a byte is still waiting for a buffer.
    assert (0, PORT_OPEN, 0, b"") not in guest.control_received()
    guest.post(receive, buffers, 4)
    guest.write(mmio.QUEUE_NOTIFY, receive)
    (head, length), = guest.queues[receive].take_used()
    assert guest.memory.read(buffers[head], length) == b"o"
    assert guest.control_received() == [(0, PORT_OPEN, 0, b"")]


def test_an_input_port_already_at_eof_is_never_opened() -> None:
    guest = Guest([Port("stdin")])
    guest.device.end_input(0)
    guest.send_control(0xFFFFFFFF, DEVICE_READY, 1)
    guest.send_control(0, PORT_READY, 1)
    assert guest.control_received() == [(0, DEVICE_ADD, 0, b""), (0, PORT_NAME, 0, b"stdin")]


# -- a hostile guest (issue 19): every chain bounded, nothing escapes ---------------------

def _ready_stdio_guest(stdout: list[bytes]) -> Guest:
    guest = Guest([Port("stdin"), Port("stdout", lambda v: stdout.append(bytes(v)))])
    guest.send_control(0xFFFFFFFF, DEVICE_READY, 1)
    for number in range(2):
        guest.send_control(number, PORT_READY, 1)
    guest.control_received()
    return guest


def test_output_on_the_input_port_is_dropped_and_counted() -> None:
    stdout: list[bytes] = []
    guest = _ready_stdio_guest(stdout)
    _, stdin_transmit = queue_indexes(0)
    queue = guest.queues[stdin_transmit]
    queue.add_chain([(queue.alloc(5, b"hello"), 5, False)])
    guest.write(mmio.QUEUE_NOTIFY, stdin_transmit)  # raised AssertionError: exit 6
    assert guest.device.dropped_chains == 1
    assert queue.take_used() == [(0, 0)]
    assert not guest.read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET
    _, stdout_transmit = queue_indexes(1)
    queue = guest.queues[stdout_transmit]
    queue.add_chain([(queue.alloc(3, b"out"), 3, False)])
    guest.write(mmio.QUEUE_NOTIFY, stdout_transmit)
    assert stdout == [b"out"]


def test_a_device_error_without_a_message_is_named() -> None:
    assert describe(AssertionError()) == "AssertionError"
    assert describe(ValueError("bad")) == "bad"


def test_one_transmit_chain_gives_at_most_the_transmit_limit() -> None:
    received = [0]

    def count(view: memoryview) -> None:
        received[0] += len(view)
    guest = Guest([Port("stdin"), Port("stdout", count)])
    _, transmit = queue_indexes(1)
    queue = guest.queues[transmit]
    # 16 descriptors over the same 1 MiB of guest RAM: 16 MiB from 1 MiB.
    queue.add_chain([(0x200000, 1 << 20, False)] * 16)
    guest.write(mmio.QUEUE_NOTIFY, transmit)
    assert received[0] == TRANSMIT_LIMIT
    assert guest.device.truncated_chains == 1
    assert queue.take_used() == [(0, 0)]


def test_slow_output_gives_the_event_loop_back_within_the_budget() -> None:
    guest = Guest([Port("stdin"), Port("stdout", lambda view: time.sleep(0.01))])
    _, transmit = queue_indexes(1)
    queue = guest.queues[transmit]
    for _ in range(12):
        queue.add_chain([(queue.alloc(4096), 4096, False)])
    start = time.monotonic()
    assert guest.transport.notify(transmit)  # work left: come back after other events
    assert time.monotonic() - start < SERVE_BUDGET_SECONDS + 0.05
    while guest.transport.notify(transmit):
        pass
    assert len(queue.take_used()) == 12


def test_the_status_port_copies_no_more_than_it_keeps() -> None:
    from pyvmm.command.run import STATUS, STATUS_LIMIT, Streams

    streams = Streams(stdout=lambda v: None, stderr=lambda v: None, stdin=b"")
    sink = streams.ports[STATUS].sink
    assert sink is not None
    big = memoryview(bytearray(b"x" * (8 << 20)))
    tracemalloc.start()
    try:
        sink(big)
        sink(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(streams.status) == STATUS_LIMIT
    assert peak < 64 << 10


def test_repeated_device_ready_keeps_a_bounded_control_backlog() -> None:
    guest = Guest([Port("stdin"), Port("stdout", lambda v: None), Port("stderr", lambda v: None)])
    for _ in range(2000):  # the guest's 8 control buffers are long used up
        guest.send_control(0xFFFFFFFF, DEVICE_READY, 1)
    assert len(guest.device._control_out) <= CONTROL_KINDS * 3
    # What is owed still arrives once the guest posts buffers, and the handshake goes on.
    messages = guest.control_received() + guest.control_received()
    assert sorted(set(messages)) == [(n, DEVICE_ADD, 0, b"") for n in range(3)]
    guest.send_control(1, PORT_READY, 1)
    assert guest.control_received() == [(1, PORT_OPEN, 1, b""), (1, PORT_NAME, 0, b"stdout")]


def test_a_malformed_queue_met_by_host_input_or_shutdown_needs_a_reset() -> None:
    stdout: list[bytes] = []
    guest = _ready_stdio_guest(stdout)
    guest.send_control(0, PORT_OPEN, 1)
    receive, _ = queue_indexes(0)
    guest.queues[receive].add_chain([(1 << 40, 16, True)])  # outside guest RAM
    _, transmit = queue_indexes(1)
    guest.queues[transmit].add_chain([(1 << 40, 16, False)])  # queued, never notified
    guest.device.enqueue_input(0, b"input")   # raised QueueError in the stdin thread
    guest.device.end_input(0)
    assert guest.read(mmio.STATUS) & mmio.STATUS_NEEDS_RESET
    guest.transport.shutdown()                # raised QueueError: "could not flush a disk"
    assert stdout == []
    # A reset and a new bring-up make the device usable again.
    guest.write(mmio.STATUS, 0)
    assert not guest.device._failed


def test_a_malformed_transmit_queue_at_shutdown_is_not_an_error() -> None:
    guest = _ready_stdio_guest([])
    _, transmit = queue_indexes(1)
    guest.queues[transmit].add_chain([(1 << 40, 16, False)])
    guest.transport.shutdown()  # raised QueueError
