"""A 16550A UART (the PC's COM1), modelled on QEMU's serial.c and vm-superio.

Transmitted bytes are buffered and handed to ``out`` a line at a time (at a
newline, when ``TX_BUFFER_BYTES`` are waiting, or on ``flush``): a console
write per byte is what made a verbose boot slow.  Bytes left without a newline
(a shell prompt) are the owner's to flush: ``on_pending`` tells it that output
started waiting, ``flush_due`` when to flush it.  Receive comes from
``enqueue_input`` on the main thread and raises the RX interrupt.  The
interrupt output follows the pending-interrupt state as a level, like the real
chip's INTR pin.  The vCPU threads and the main thread both touch the state,
hence the lock.

For a VMM that serves some accesses without calling ``read``/``write`` (a
coalesced THR, a line-status read answered in C), the UART says when that is
exact: ``tx_polled`` (no THR-empty interrupt, no loopback: a THR write has no
effect but the byte, so writes may be batched and applied by ``transmit``)
and ``cells``, kept current under the lock: the value an LSR read returns
(reading it has no side effect while no overrun is flagged, which this model
never does), IER's value, and whether IER is at offset 1 (DLAB clear):
reading IER, or writing the value it has, changes nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from pyvmm.devices.irq import InterruptLine

# Register offsets from the base port.
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RX_DATA = 0x01
IER_THR_EMPTY = 0x02
IER_LINE_STATUS = 0x04
IER_MODEM_STATUS = 0x08
IER_MASK = 0x0F

IIR_NO_INTERRUPT = 0x01
IIR_LINE_STATUS = 0x06
IIR_RX_DATA = 0x04
IIR_THR_EMPTY = 0x02
IIR_MODEM_STATUS = 0x00
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RX = 0x02

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DATA_READY = 0x01
LSR_OVERRUN = 0x02
LSR_THR_EMPTY = 0x20
LSR_TRANSMITTER_EMPTY = 0x40

MSR_DELTA_MASK = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
#: Lines asserted by "the other end" when not in loopback, as QEMU reports them.
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

#: Bytes buffered for the guest to read (a real 16550 holds 16; more is kinder).
INPUT_CAPACITY = 64 * 1024
#: Divisor latch at reset: 115200 baud from the 1.8432 MHz clock.
DEFAULT_DIVISOR = 1

#: Indices into ``Serial.cells``.
CELL_LSR = 0
CELL_IER = 1
CELL_IER_VALID = 2

#: Transmitted bytes held before ``out`` gets them, at most (a newline flushes sooner).
TX_BUFFER_BYTES = 4096
#: How long a partial line may wait for its newline before ``flush_due`` says flush.
TX_FLUSH_DELAY = 0.01


class Serial:
    """16550A registers at offsets 0..7."""

    def __init__(self, interrupt: InterruptLine, out: Callable[[bytes], None],
                 on_pending: Callable[[], None] | None = None,
                 on_tx_polled: Callable[[bool], None] | None = None) -> None:
        self._interrupt = interrupt
        self._out = out
        #: Called (no lock held) when output starts waiting for ``flush_due``.
        self.on_pending = on_pending
        #: Called with the new ``tx_polled`` just before a register write changes it.
        self.on_tx_polled = on_tx_polled
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()  # held while handing a chunk to ``out``: keeps order
        self._input = bytearray()
        self._tx = bytearray()
        self._tx_since = 0.0
        self._tx_watched = False
        self._divisor = DEFAULT_DIVISOR
        self._ier = 0
        self._lcr = 0
        self._mcr = MCR_OUT2
        self._lsr = LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY
        self._msr = MSR_CONNECTED
        self._scr = 0
        self._fifo_enabled = False
        self._thr_interrupt_pending = False
        self._irq_level = False
        #: LSR, IER and "IER is at offset 1" as a read would see them now (module doc).
        self.cells = bytearray(3)
        self._publish()

    # -- host side -------------------------------------------------------------

    def input_room(self) -> int:
        """How many more bytes ``enqueue_input`` would take now."""
        with self._lock:
            return INPUT_CAPACITY - len(self._input)

    def enqueue_input(self, data: bytes) -> int:
        """Queue bytes for the guest to read; return how many were taken."""
        with self._lock:
            taken = data[:INPUT_CAPACITY - len(self._input)]
            self._input += taken
            self._update_interrupt()
            self._publish()
            return len(taken)

    def flush(self, wait: bool = True) -> bool:
        """Hand what the guest transmitted so far to ``out`` (any thread, in order).

        With ``wait`` False, return False at once if another thread is writing.
        """
        if not self._out_lock.acquire(blocking=wait):
            return False
        try:
            with self._lock:
                if not self._tx:
                    return True
                chunk = bytes(self._tx)
                self._tx.clear()
            self._out(chunk)
            return True
        finally:
            self._out_lock.release()

    def flush_due(self, now: float | None = None) -> float | None:
        """Flush output that waited ``TX_FLUSH_DELAY``; seconds until the next is due.

        None when nothing waits: the next byte calls ``on_pending`` again.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._tx:
                self._tx_watched = False
                return None
            wait = self._tx_since + TX_FLUSH_DELAY - now
        if wait > 0:
            return wait
        self.flush(wait=False)  # a vCPU already writing (to a slow stdout) has it in hand
        return TX_FLUSH_DELAY

    @property
    def tx_polled(self) -> bool:
        """True when a THR write does nothing but send its byte (see the module doc)."""
        return not (self._ier & IER_THR_EMPTY or self._mcr & MCR_LOOP)

    # -- snapshot ----------------------------------------------------------------

    def to_state(self) -> dict:
        """The registers and the guest's unread input, as plain values (transmitted
        bytes are handed to ``out`` first: they belong to the machine that sent them)."""
        self.flush()
        with self._lock:
            return {"divisor": self._divisor, "ier": self._ier, "lcr": self._lcr,
                    "mcr": self._mcr, "lsr": self._lsr, "msr": self._msr, "scr": self._scr,
                    "fifo_enabled": self._fifo_enabled,
                    "thr_interrupt_pending": self._thr_interrupt_pending,
                    "input": self._input.hex()}

    def from_state(self, state: dict) -> None:
        """Take the registers ``to_state`` gave; the interrupt line follows them."""
        with self._lock:
            self._divisor, self._ier, self._lcr = state["divisor"], state["ier"], state["lcr"]
            self._mcr, self._lsr, self._msr = state["mcr"], state["lsr"], state["msr"]
            self._scr, self._fifo_enabled = state["scr"], bool(state["fifo_enabled"])
            self._thr_interrupt_pending = bool(state["thr_interrupt_pending"])
            self._input = bytearray.fromhex(state["input"])[:INPUT_CAPACITY]
            self._irq_level = False
            self._update_interrupt()
            self._publish()
            polled = self.tx_polled
        if self.on_tx_polled is not None:
            self.on_tx_polled(polled)

    # -- guest side ------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            value = self._read_register(offset)
            self._update_interrupt()
            if offset == RBR_THR_DLL:
                self._publish()
        data[0] = value
        if len(data) > 1:
            data[1:] = b"\x00" * (len(data) - 1)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset == RBR_THR_DLL:
            self.transmit(data[:1])
            return
        value = data[0]
        if self.on_tx_polled is not None and offset in (IER_DLM, MCR):
            with self._lock:
                polled, will_be = self.tx_polled, self._tx_polled_after(offset, value)
            if polled != will_be:
                self.on_tx_polled(will_be)  # before the write: batched THR writes come first
        with self._lock:
            self._write_register(offset, value)
            self._update_interrupt()
            self._publish()

    def _tx_polled_after(self, offset: int, value: int) -> bool:
        ier, mcr = self._ier, self._mcr
        if offset == IER_DLM and not self._lcr & LCR_DLAB:
            ier = value & IER_MASK
        elif offset == MCR:
            mcr = value & MCR_MASK
        return not (ier & IER_THR_EMPTY or mcr & MCR_LOOP)

    def transmit(self, data: bytes | memoryview) -> None:
        """Writes of ``data`` to offset 0 (THR, or the divisor latch), one byte each, in order."""
        with self._lock:
            waiting = len(self._tx)
            for value in data:
                self._write_register(RBR_THR_DLL, value)
            self._update_interrupt()
            self._publish()
            added = len(self._tx) - waiting
            start_watch = added and not self._tx_watched
            if start_watch:
                self._tx_watched = True
            if added and not waiting:
                self._tx_since = time.monotonic()
            flush = added and (len(self._tx) >= TX_BUFFER_BYTES or 0x0A in data)
        if flush:
            self.flush()
        elif start_watch and self.on_pending is not None:
            self.on_pending()

    def _publish(self) -> None:
        cells = self.cells
        cells[CELL_LSR] = self._lsr | (LSR_DATA_READY if self._input else 0)
        cells[CELL_IER] = self._ier
        cells[CELL_IER_VALID] = 0 if self._lcr & LCR_DLAB else 1

    def _read_register(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                return self._divisor & 0xFF
            if not self._input:
                return 0
            value = self._input.pop(0)
            return value
        if offset == IER_DLM:
            return (self._divisor >> 8) & 0xFF if dlab else self._ier
        if offset == IIR_FCR:
            value = self._interrupt_identification()
            if value & 0x0F == IIR_THR_EMPTY:
                self._thr_interrupt_pending = False  # reading IIR acknowledges THRE
            return value | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            value = self._lsr | (LSR_DATA_READY if self._input else 0)
            self._lsr &= ~LSR_OVERRUN
            return value
        if offset == MSR:
            value = self._modem_status()
            self._msr &= ~MSR_DELTA_MASK
            return value
        return self._scr

    def _write_register(self, offset: int, value: int) -> None:
        """Apply a register write (a transmitted byte goes to ``_tx``)."""
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                self._divisor = (self._divisor & 0xFF00) | value
                return
            # The byte leaves at once, so THR is empty again: THRE re-arms.
            self._thr_interrupt_pending = True
            if self._mcr & MCR_LOOP:
                if len(self._input) < INPUT_CAPACITY:
                    self._input.append(value)
                return
            self._tx.append(value)
            return
        if offset == IER_DLM:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
                return
            enabling_thre = value & IER_THR_EMPTY and not self._ier & IER_THR_EMPTY
            self._ier = value & IER_MASK
            if enabling_thre:
                self._thr_interrupt_pending = True  # as the 8250 driver's probe expects
        elif offset == IIR_FCR:
            self._fifo_enabled = bool(value & FCR_ENABLE_FIFO)
            if value & FCR_CLEAR_RX:
                self._input.clear()
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & MCR_MASK
        elif offset == SCR:
            self._scr = value

    def _modem_status(self) -> int:
        if not self._mcr & MCR_LOOP:
            return self._msr
        # Loopback wires the modem-control outputs back to the status inputs.
        mcr = self._mcr
        value = self._msr & MSR_DELTA_MASK
        if mcr & MCR_RTS:
            value |= MSR_CTS
        if mcr & MCR_DTR:
            value |= MSR_DSR
        if mcr & MCR_OUT1:
            value |= MSR_RI
        if mcr & MCR_OUT2:
            value |= MSR_DCD
        return value

    def _interrupt_identification(self) -> int:
        """The highest-priority pending interrupt, as IIR bits 0..3."""
        if self._ier & IER_LINE_STATUS and self._lsr & LSR_OVERRUN:
            return IIR_LINE_STATUS
        if self._ier & IER_RX_DATA and self._input:
            return IIR_RX_DATA
        if self._ier & IER_THR_EMPTY and self._thr_interrupt_pending:
            return IIR_THR_EMPTY
        if self._ier & IER_MODEM_STATUS and self._msr & MSR_DELTA_MASK:
            return IIR_MODEM_STATUS
        return IIR_NO_INTERRUPT

    def _update_interrupt(self) -> None:
        level = self._interrupt_identification() != IIR_NO_INTERRUPT
        if level != self._irq_level:
            self._irq_level = level
            self._interrupt.set_level(level)
