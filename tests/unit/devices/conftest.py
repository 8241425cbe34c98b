"""What the device tests share (the vCPU's UART fast path tests too): an interrupt
line that records its levels, a one-byte register read, and the UART in both of
its implementations (the Python reference, and it with the C side in front)."""

from __future__ import annotations

import os
import weakref
from typing import Callable, Union

import pytest

from pyvmm.devices.bus import BusDevice
from pyvmm.devices.serial import ST_IRQ, Serial


class FakeLine:
    """An ``InterruptLine`` that keeps every level it was set to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    @property
    def edges(self) -> int:
        """How many times the line rose (it starts low)."""
        return sum(high and not before for before, high in zip([False, *self.levels], self.levels))


def rd(device: BusDevice, offset: int) -> int:
    """The byte a one-byte read of ``device`` at ``offset`` returns."""
    data = bytearray(1)
    device.read(offset, memoryview(data))
    return data[0]


class SerialWithC:
    """COM1 as a vCPU's C loop and the bus serve it together: each 1-byte access
    goes to the registers' C side (``pyvmm.vcpu.uart_fastpath.UartRegistersInC``)
    first and to the ``Serial`` when C leaves it to Python, on one shared state.
    ``line`` gets the level at every change either side makes (C drives no real
    line here: it counts), and ``served_in_c`` counts the accesses C took.
    """

    def __init__(self, line: FakeLine, out: Callable[[bytes], None]) -> None:
        from pyvmm.vcpu.uart_fastpath import UartRegistersInC

        self.serial = Serial(line, out)
        self.c = UartRegistersInC(self.serial, -1, 4)
        self.line = line
        self.served_in_c = 0
        self._changes = 0
        # The event loop's wake-up fd: C writes it for output, the loop runs flush_due.
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(self, os.close, self.wake_fd)
        self.c.wake_on_output(self.wake_fd)
        #: How many times C woke the loop.
        self.wakes = 0

    def _track_line(self) -> None:
        try:
            self.wakes += os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        else:
            self.serial.flush_due()  # what the loop's tick does
        changes = int(self.c.block.irq_changes)
        assert changes - self._changes <= 1, "two changes in one call: an edge the test can't see"
        if changes != self._changes:
            self._changes = changes
            self.line.set_level(bool(self.serial.state[ST_IRQ]))

    def read(self, offset: int, data: memoryview) -> None:
        value = self.c.access(offset, False) if len(data) == 1 else None
        if value is None:
            self.serial.read(offset, data)
        else:
            self.served_in_c += 1
            data[0] = value
        self._track_line()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if len(data) == 1 and self.c.access(offset, True, data[0]) is not None:
            self.served_in_c += 1
        else:
            self.serial.write(offset, data)
        self._track_line()

    def transmit(self, data: bytes | memoryview) -> None:
        self.serial.transmit(data)
        self._track_line()

    def enqueue_input(self, data: bytes) -> int:
        taken = self.serial.enqueue_input(data)
        self._track_line()
        return taken

    def input_room(self) -> int:
        return self.serial.input_room()

    def flush(self, wait: bool = True) -> bool:
        return self.serial.flush(wait)

    def flush_due(self, now: float | None = None) -> float | None:
        return self.serial.flush_due(now)

    @property
    def tx_polled(self) -> bool:
        return self.serial.tx_polled

    @property
    def on_pending(self) -> Callable[[], None] | None:
        return self.serial.on_pending

    @on_pending.setter
    def on_pending(self, callback: Callable[[], None] | None) -> None:
        self.serial.on_pending = callback

    @property
    def on_tx_polled(self) -> Callable[[bool], None] | None:
        return self.serial.on_tx_polled

    @on_tx_polled.setter
    def on_tx_polled(self, callback: Callable[[bool], None] | None) -> None:
        """An owner that coalesces THR writes while they are polled: the C side leaves the
        IER writes that turn the THR-empty interrupt on to Python then (the ones that turn
        it off it serves: the fast path coalesces again only when polled output flows)."""
        if callback is None:
            self.serial.on_tx_polled = None
            return

        def switch(polled: bool) -> None:
            with self.c.lock:
                self.c.block.coalescing = int(polled)
            callback(polled)
        self.serial.on_tx_polled = switch
        with self.c.lock:
            self.c.block.coalescing = int(self.serial.tx_polled)

    @property
    def state(self) -> bytearray:
        return self.serial.state


#: What the register tests build: the Python reference alone, or it with its C side.
SerialUnderTest = Union[Serial, SerialWithC]
MakeSerial = Callable[..., tuple[SerialUnderTest, FakeLine, bytearray]]


@pytest.fixture(params=["python", "c"])
def make_serial(request: pytest.FixtureRequest) -> MakeSerial:
    """A factory of (UART, its line, its output) for each implementation; ``out``
    replaces the output bytearray's extend."""

    def make(out: Callable[[bytes], None] | None = None
             ) -> tuple[SerialUnderTest, FakeLine, bytearray]:
        line, output = FakeLine(), bytearray()
        writer = out if out is not None else output.extend
        device: SerialUnderTest = (Serial(line, writer) if request.param == "python"
                                   else SerialWithC(line, writer))
        return device, line, output

    return make


def told(device: SerialUnderTest, pending: list[bool]) -> int:
    """How often the owner heard that output waits: ``on_pending`` calls (``pending``),
    or for output C served, its wake-ups of the event loop."""
    return len(pending) if isinstance(device, Serial) else len(pending) + device.wakes
