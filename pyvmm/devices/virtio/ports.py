"""A multiport virtio-console (virtio 1.2 section 5.3.6): named byte streams, no tty.

Each port is a character device in the guest (``/dev/vportNpM``, its name in
``/sys/class/virtio-ports/vportNpM/name``), binary-safe and without line
discipline, which is what command mode needs for stdin, stdout and stderr.
An output port hands each guest buffer to its sink (at most
``TRANSMIT_LIMIT`` bytes of one chain, as hvc0; a chain on an input port's
transmit queue is dropped and counted); an input port
fills the guest's receive buffers from a bounded buffer (only while a guest
process has it open: Linux discards data for a closed port), and once its source
ends and everything is delivered, the host side closes (``PORT_OPEN`` 0), so
the guest's ``read`` returns 0: end of file.

Queues: receive/transmit of port 0, the control receive/transmit pair, then
receive/transmit of ports 1, 2, ...  Control messages are ``{le32 id, le16
event, le16 value}``, with the name after a ``PORT_NAME``.  Messages waiting
for the guest's control receive buffers are kept once each (a repeat of one
still waiting is dropped), so a guest repeating ``DEVICE_READY`` without
posting buffers can't grow the backlog: it holds at most ``CONTROL_KINDS``
messages per port.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from pyvmm.devices.virtio.console import TRANSMIT_LIMIT
from pyvmm.devices.virtio.device import COMMON_FEATURES, VirtioDevice
from pyvmm.devices.virtio.queue import (DescriptorChain, QueueError, SplitQueue, read_from,
                                        write_into)

log = logging.getLogger(__name__)

VIRTIO_ID_CONSOLE = 3
VIRTIO_CONSOLE_F_MULTIPORT = 1
CONTROL_RECEIVE = 2     # device -> driver
CONTROL_TRANSMIT = 3    # driver -> device
QUEUE_SIZE = 256
#: Host input kept per input port while the guest has no receive buffers posted.
INPUT_LIMIT = 256 << 10

CONTROL = struct.Struct("<IHH")  # id, event, value
#: config: cols, rows, max_nr_ports, emerg_wr.
CONFIG = struct.Struct("<HHII")

# Control events (virtio 1.2, 5.3.6.2).
DEVICE_READY = 0
DEVICE_ADD = 1
PORT_READY = 3
CONSOLE_PORT = 4
PORT_OPEN = 6
PORT_NAME = 7
#: Distinct messages the device can owe one port: DEVICE_ADD, PORT_OPEN 1 and 0,
#: PORT_NAME (each once per driver reset); the bound of the control backlog.
CONTROL_KINDS = 4

#: Receives guest output of one port.
Sink = Callable[[memoryview], None]


def queue_indexes(port: int) -> tuple[int, int]:
    """(receive, transmit) queue of ``port``."""
    base = 0 if port == 0 else 2 * (port + 1)
    return base, base + 1


@dataclass
class Port:
    """One named stream: output when it has a sink, else input (host -> guest)."""

    name: str
    sink: Sink | None = None
    pending: bytearray = field(default_factory=bytearray)
    at_eof: bool = False
    host_open: bool = False
    guest_ready: bool = False
    guest_open: bool = False


class PortsDevice(VirtioDevice):
    """A virtio console whose ports are named streams (VIRTIO_CONSOLE_F_MULTIPORT)."""

    device_id = VIRTIO_ID_CONSOLE

    def __init__(self, ports: list[Port]) -> None:
        super().__init__((QUEUE_SIZE,) * (2 * (len(ports) + 1)))
        self.ports = ports
        self._control_out: collections.deque[bytes] = collections.deque()
        self._queue_port: dict[int, tuple[int, bool]] = {}
        for number in range(len(ports)):
            receive, transmit = queue_indexes(number)
            self._queue_port[receive] = (number, False)
            self._queue_port[transmit] = (number, True)
        self._room = threading.Condition(self.lock)
        self._closed = False
        #: A queue was malformed: nothing more is done on the device's own
        #: initiative (input, shutdown) until the driver resets it.
        self._failed = False
        #: Chains the guest queued on an input port's transmit queue (dropped),
        #: and chains cut at TRANSMIT_LIMIT.
        self.dropped_chains = 0
        self.truncated_chains = 0

    # -- what the transport asks ---------------------------------------------------------

    def device_features(self) -> int:
        return COMMON_FEATURES | 1 << VIRTIO_CONSOLE_F_MULTIPORT

    def config_space(self) -> bytes:
        return CONFIG.pack(0, 0, len(self.ports), 0)

    def process_queue(self, index: int) -> None:
        try:
            self._process_queue(index)
        except QueueError:
            self._failed = True  # the transport puts us in DEVICE_NEEDS_RESET
            raise

    def _process_queue(self, index: int) -> None:
        if index == CONTROL_TRANSMIT:
            self.serve(self.queues[index], self._control_message)
            self._flush_control()
        elif index == CONTROL_RECEIVE:
            self._flush_control()
        elif index in self._queue_port:
            number, transmit = self._queue_port[index]
            if transmit:
                self.serve(self.queues[index], self._port_output(self.ports[number]))
            else:
                self._deliver(number)

    def pending(self, index: int) -> bool:
        # Posted receive buffers wait for data, not for us to come back.
        transmit = index == CONTROL_TRANSMIT or self._queue_port.get(index, (0, False))[1]
        return transmit and super().pending(index)

    def reset(self) -> None:
        super().reset()
        self._failed = False
        self._control_out.clear()
        for port in self.ports:
            port.guest_ready = port.guest_open = False

    def shutdown(self) -> None:
        """The VMM is stopping: take the output the guest queued but did not see served.

        A malformed queue found now is logged: the run is over, the guest's
        broken ring is not a failure of pyvmm's exit.
        """
        with self._room:
            for number, port in enumerate(self.ports):
                if port.sink is not None and not self._failed:
                    try:
                        self.serve(self.queues[queue_indexes(number)[1]], self._port_output(port))
                    except QueueError as exc:
                        self._failed = True
                        log.warning("virtio ports: %s (output left at exit)", exc)
            self._closed = True
            self._room.notify_all()

    def _on_own_initiative(self, work: Callable[[], None]) -> None:
        """Queue work not started by a notification (host input): a malformed queue
        puts the device in DEVICE_NEEDS_RESET, as one found in ``process_queue``."""
        if self._failed:
            return
        try:
            work()
        except QueueError as exc:
            self._failed = True
            self._broken(str(exc))

    # -- control ---------------------------------------------------------------------------

    def _send_control(self, port: int, event: int, value: int = 0, extra: bytes = b"") -> None:
        message = CONTROL.pack(port, event, value) + extra
        if message not in self._control_out:  # a repeat still waiting adds nothing
            self._control_out.append(message)

    def _control_message(self, chain: DescriptorChain) -> int:
        data = read_from(chain.readable, CONTROL.size)
        if len(data) < CONTROL.size:
            return 0
        number, event, value = CONTROL.unpack(data)
        if event == DEVICE_READY and value == 1:
            for each in range(len(self.ports)):
                self._send_control(each, DEVICE_ADD)
        elif number < len(self.ports):
            port = self.ports[number]
            if event == PORT_READY and value == 1 and not port.guest_ready:
                port.guest_ready = True
                # Open before the name: the guest waits for the name, then the port is usable.
                port.host_open = not (port.sink is None and port.at_eof and not port.pending)
                if port.host_open:
                    self._send_control(number, PORT_OPEN, 1)
                self._send_control(number, PORT_NAME, 0, port.name.encode())
            elif event == PORT_OPEN:
                port.guest_open = bool(value)
                if port.guest_open and port.sink is None:
                    self._deliver(number)
        return 0

    def _flush_control(self) -> None:
        queue = self.queues[CONTROL_RECEIVE]
        memory = self.memory
        if memory is None or not queue.ready:
            return
        used_before = queue.next_used
        while self._control_out and (queue.next_used - used_before) & 0xFFFF < queue.size:
            chain = queue.pop(memory)
            if chain is None:
                break
            queue.add_used(chain.head, write_into(chain.writable, self._control_out.popleft()))
        queue.set_avail_event()
        if queue.needs_interrupt(used_before):
            self._raise_used()

    # -- output ports ------------------------------------------------------------------------

    def _port_output(self, port: Port) -> Callable[[DescriptorChain], int]:
        sink = port.sink

        def transmit(chain: DescriptorChain) -> int:
            if sink is None:
                # Output on an input port: Linux never sends it; a guest that does loses it.
                if not self.dropped_chains:
                    log.warning("virtio ports: output on input port %r dropped", port.name)
                self.dropped_chains += 1
                return 0
            if chain.readable_length > TRANSMIT_LIMIT:
                if not self.truncated_chains:
                    log.warning("virtio ports: a transmit chain of %d bytes on %r was cut "
                                "to %d", chain.readable_length, port.name, TRANSMIT_LIMIT)
                self.truncated_chains += 1
            room = TRANSMIT_LIMIT
            for view in chain.readable:
                if not room:
                    break
                view = view[:room]
                if len(view):
                    sink(view)
                    room -= len(view)
            return 0
        return transmit

    # -- input ports (any thread) -------------------------------------------------------------

    def enqueue_input(self, number: int, data: bytes) -> None:
        """Give ``data`` to input port ``number``; waits while its buffer is full."""
        port = self.ports[number]
        with self._room:
            while data and not self._closed:
                room = INPUT_LIMIT - len(port.pending)
                if room <= 0:
                    self._room.wait(0.5)
                    continue
                port.pending += data[:room]
                data = data[room:]
                self._on_own_initiative(lambda: self._deliver(number))

    def end_input(self, number: int) -> None:
        """The source of input port ``number`` ended: close it once delivered."""
        with self.lock:
            self.ports[number].at_eof = True
            self._on_own_initiative(lambda: self._deliver(number))

    def _deliver(self, number: int) -> None:
        port = self.ports[number]
        queue: SplitQueue = self.queues[queue_indexes(number)[0]]
        memory = self.memory
        # Linux drops what arrives on a port no guest process has open: wait for the open.
        if memory is not None and queue.ready and port.pending and port.guest_open:
            used_before = queue.next_used
            while port.pending and (queue.next_used - used_before) & 0xFFFF < queue.size:
                chain = queue.pop(memory)
                if chain is None:
                    break
                count = write_into(chain.writable, port.pending)
                del port.pending[:count]
                queue.add_used(chain.head, count)
            queue.set_avail_event()
            if queue.needs_interrupt(used_before):
                self._raise_used()
            self._room.notify_all()
        if port.at_eof and not port.pending and port.host_open:
            port.host_open = False
            self._send_control(number, PORT_OPEN, 0)
            self._flush_control()
