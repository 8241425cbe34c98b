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

This class is the reference for every register, and it can share them.
Everything an access reads or changes lives in three fixed buffers:
``state`` (the registers, the THR-empty latch, the interrupt line's level,
whether input waits, the output's length, the receive ring's head and
length; offsets ``ST_*``), ``tx`` (the output waiting for ``out``) and
``rx`` (the input waiting for the guest, a ring).  A VMM that serves some accesses
itself, without calling ``read``/``write`` (the C loop of
``pyvmm.vcpu.uart_fastpath``), works on the same bytes under the same lock and
drives the same line (``share``), so whichever side serves an access, the
other sees its effect; it must behave as this class does (tests run the
register tests against both).  Output it appends to ``tx`` is looked at (for a
newline, ``on_pending``) the next time this class takes the lock, in
``flush_due`` at the latest.

``tx_polled`` says when a THR write has no effect but its byte (no THR-empty
interrupt, no loopback), so that writes may be batched (KVM's coalesced I/O)
and applied later by ``transmit``; ``on_tx_polled`` hears of a change before
the register write that makes it.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
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

#: Transmitted bytes held before ``out`` gets them, at most (a newline flushes sooner).
TX_BUFFER_BYTES = 4096
#: How long a partial line may wait for its newline before ``flush_due`` says flush.
TX_FLUSH_DELAY = 0.01

#: Offsets into ``Serial.state`` (the module doc): one byte each, then a native u32.
ST_IER = 0
ST_LCR = 1
ST_MCR = 2
ST_LSR = 3
ST_MSR = 4
ST_SCR = 5
ST_FIFO = 6          # 1 while the FIFOs are enabled (IIR's top bits)
ST_THRE = 7          # the THR-empty interrupt's latch: set by a THR write, cleared by an IIR read
ST_IRQ = 8           # the interrupt line's level, as last driven
ST_RX = 9            # 1 while received bytes wait (LSR's data-ready bit)
ST_DLL = 10
ST_DLM = 11
ST_TX_LEN = 12       # how many bytes of ``Serial.tx`` wait for ``out``
ST_RX_HEAD = 16      # where in ``Serial.rx`` the next byte for the guest is (a native u32)
ST_RX_LEN = 20       # how many bytes of ``Serial.rx`` wait for the guest (a native u32)
STATE_BYTES = 24


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
        self._lock: AbstractContextManager[object] = threading.Lock()
        self._out_lock = threading.Lock()  # held while handing a chunk to ``out``: keeps order
        #: The registers and latches (module doc; offsets ``ST_*``).
        self.state = bytearray(STATE_BYTES)
        #: Output waiting for ``out``: the first ``state[ST_TX_LEN]`` bytes.
        self.tx = bytearray(TX_BUFFER_BYTES)
        self._tx_len = memoryview(self.state)[ST_TX_LEN:ST_TX_LEN + 4].cast("I")
        #: Input waiting for the guest: ``state[ST_RX_LEN]`` bytes from ``state[ST_RX_HEAD]``
        #: on, wrapping around (a ring, so that the other side can take bytes too).
        self.rx = bytearray(INPUT_CAPACITY)
        self._rx = memoryview(self.state)[ST_RX_HEAD:ST_RX_LEN + 4].cast("I")  # head, length
        self._tx_seen = 0  # bytes of ``tx`` already looked at for a newline
        self._tx_since = 0.0
        self._tx_watched = False
        state = self.state
        state[ST_DLL] = DEFAULT_DIVISOR
        state[ST_MCR] = MCR_OUT2
        state[ST_LSR] = LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY
        state[ST_MSR] = MSR_CONNECTED

    def share(self, lock: AbstractContextManager[object], interrupt: InterruptLine) -> None:
        """Serve the registers beside another implementation of them (module doc).

        From now on every access takes ``lock``, which the other side takes
        too, and ``interrupt`` is driven at every change of ``state[ST_IRQ]``
        made here (the other side drives the same line itself).  Call it
        before the guest runs.
        """
        self._lock = lock
        self._interrupt = interrupt

    # -- host side -------------------------------------------------------------

    def input_room(self) -> int:
        """How many more bytes ``enqueue_input`` would take now."""
        with self._lock:
            return INPUT_CAPACITY - self._rx[1]

    def enqueue_input(self, data: bytes) -> int:
        """Queue bytes for the guest to read; return how many were taken."""
        with self._lock:
            taken = self._append_input(data)
            self._update_interrupt()
            return taken

    def _append_input(self, data: bytes | bytearray) -> int:
        """Put what fits of ``data`` at the receive ring's tail; how many bytes did (lock held)."""
        head, length = self._rx
        count = min(len(data), INPUT_CAPACITY - length)
        tail = (head + length) % INPUT_CAPACITY
        first = min(count, INPUT_CAPACITY - tail)
        self.rx[tail:tail + first] = data[:first]
        self.rx[:count - first] = data[first:count]
        self._rx[1] = length + count
        self.state[ST_RX] = 1 if length + count else 0
        return count

    def _pending_input(self) -> bytes:
        """The receive ring's bytes, oldest first (lock held)."""
        head, length = self._rx
        end = head + length
        if end <= INPUT_CAPACITY:
            return bytes(self.rx[head:end])
        return bytes(self.rx[head:]) + bytes(self.rx[:end - INPUT_CAPACITY])

    def _clear_input(self) -> None:
        self._rx[0] = self._rx[1] = 0
        self.state[ST_RX] = 0

    def flush(self, wait: bool = True) -> bool:
        """Hand what the guest transmitted so far to ``out`` (any thread, in order).

        With ``wait`` False, return False at once if another thread is writing.
        """
        if not self._out_lock.acquire(blocking=wait):
            return False
        try:
            with self._lock:
                length = self._tx_len[0]
                if not length:
                    return True
                chunk = bytes(self.tx[:length])
                self._tx_len[0] = 0
                self._tx_seen = 0
            self._out(chunk)
            return True
        finally:
            self._out_lock.release()

    def flush_due(self, now: float | None = None) -> float | None:
        """Flush output that waited ``TX_FLUSH_DELAY``, or holds a newline another side
        appended; seconds until the next is due.

        None when nothing waits: the next byte calls ``on_pending`` again.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            complete, _ = self._look_at_output(now)
            if not self._tx_len[0]:
                self._tx_watched = False
                return None
            self._tx_watched = True
            wait = self._tx_since + TX_FLUSH_DELAY - now
        if wait > 0 and not complete:
            return wait
        self.flush(wait=False)  # a vCPU already writing (to a slow stdout) has it in hand
        return TX_FLUSH_DELAY

    @property
    def tx_polled(self) -> bool:
        """True when a THR write does nothing but send its byte (see the module doc)."""
        state = self.state
        return not (state[ST_IER] & IER_THR_EMPTY or state[ST_MCR] & MCR_LOOP)

    # -- snapshot ----------------------------------------------------------------

    def to_state(self) -> dict:
        """The registers and the guest's unread input, as plain values (transmitted
        bytes are handed to ``out`` first: they belong to the machine that sent them)."""
        self.flush()
        with self._lock:
            state = self.state
            return {"divisor": state[ST_DLL] | state[ST_DLM] << 8, "ier": state[ST_IER],
                    "lcr": state[ST_LCR], "mcr": state[ST_MCR], "lsr": state[ST_LSR],
                    "msr": state[ST_MSR], "scr": state[ST_SCR],
                    "fifo_enabled": bool(state[ST_FIFO]),
                    "thr_interrupt_pending": bool(state[ST_THRE]),
                    "input": self._pending_input().hex()}

    def from_state(self, saved: dict) -> None:
        """Take the registers ``to_state`` gave; the interrupt line follows them."""
        with self._lock:
            state = self.state
            state[ST_DLL], state[ST_DLM] = saved["divisor"] & 0xFF, saved["divisor"] >> 8 & 0xFF
            for offset, name in ((ST_IER, "ier"), (ST_LCR, "lcr"), (ST_MCR, "mcr"),
                                 (ST_LSR, "lsr"), (ST_MSR, "msr"), (ST_SCR, "scr")):
                state[offset] = saved[name]
            state[ST_FIFO] = 1 if saved["fifo_enabled"] else 0
            state[ST_THRE] = 1 if saved["thr_interrupt_pending"] else 0
            self._clear_input()
            self._append_input(bytearray.fromhex(saved["input"]))
            state[ST_IRQ] = 0  # a new machine's line is low: raised below if it must be
            self._update_interrupt()
            polled = self.tx_polled
        if self.on_tx_polled is not None:
            self.on_tx_polled(polled)

    # -- guest side ------------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            value = self._read_register(offset)
            self._update_interrupt()
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

    def _tx_polled_after(self, offset: int, value: int) -> bool:
        state = self.state
        ier, mcr = state[ST_IER], state[ST_MCR]
        if offset == IER_DLM and not state[ST_LCR] & LCR_DLAB:
            ier = value & IER_MASK
        elif offset == MCR:
            mcr = value & MCR_MASK
        return not (ier & IER_THR_EMPTY or mcr & MCR_LOOP)

    def tx_is_full(self) -> bool:
        """No room for another THR write until ``tx`` is flushed."""
        return self._tx_len[0] >= len(self.tx)

    def transmit(self, data: bytes | memoryview) -> None:
        """Writes of ``data`` to offset 0 (THR, or the divisor latch), one byte each, in order."""
        done = 0
        while True:
            with self._lock:
                done = self._write_thr(data, done)
                self._update_interrupt()
                flush, start_watch = self._look_at_output(time.monotonic())
            if flush or done < len(data):  # a newline, or ``tx`` is full
                self.flush()
            elif start_watch and self.on_pending is not None:
                self.on_pending()
            if done == len(data):
                return

    def _write_thr(self, data: bytes | memoryview, start: int) -> int:
        """Apply THR writes of ``data[start:]`` while ``tx`` has room; how far it got."""
        state, full = self.state, len(self.tx)
        for index in range(start, len(data)):
            if self._tx_len[0] == full and not state[ST_LCR] & LCR_DLAB \
                    and not state[ST_MCR] & MCR_LOOP:
                return index
            self._write_register(RBR_THR_DLL, data[index])
        return len(data)

    def _look_at_output(self, now: float) -> tuple[bool, bool]:
        """(flush now, start the flush timer) for output not looked at yet, this side's or
        the other's: a newline or a full ``tx`` flushes, a partial line waits."""
        length, seen = self._tx_len[0], self._tx_seen
        if length <= seen:
            return False, False
        if not seen:
            self._tx_since = now
        self._tx_seen = length
        if length >= len(self.tx) or self.tx.find(b"\n", seen, length) >= 0:
            return True, False
        if self._tx_watched:
            return False, False
        self._tx_watched = True
        return False, True

    def _read_register(self, offset: int) -> int:
        state = self.state
        dlab = state[ST_LCR] & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                return state[ST_DLL]
            head, length = self._rx
            if not length:
                return 0
            self._rx[0], self._rx[1] = (head + 1) % INPUT_CAPACITY, length - 1
            state[ST_RX] = 1 if length > 1 else 0
            return self.rx[head]
        if offset == IER_DLM:
            return state[ST_DLM] if dlab else state[ST_IER]
        if offset == IIR_FCR:
            value = self._interrupt_identification()
            if value == IIR_THR_EMPTY:
                state[ST_THRE] = 0  # reading IIR acknowledges THRE
            return value | (IIR_FIFO_ENABLED if state[ST_FIFO] else 0)
        if offset == LCR:
            return state[ST_LCR]
        if offset == MCR:
            return state[ST_MCR]
        if offset == LSR:
            value = state[ST_LSR] | (LSR_DATA_READY if state[ST_RX] else 0)
            state[ST_LSR] &= ~LSR_OVERRUN
            return value
        if offset == MSR:
            value = self._modem_status()
            state[ST_MSR] &= ~MSR_DELTA_MASK
            return value
        return state[ST_SCR]

    def _write_register(self, offset: int, value: int) -> None:
        """Apply a register write (a transmitted byte goes to ``tx``, which has room)."""
        state = self.state
        dlab = state[ST_LCR] & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                state[ST_DLL] = value
                return
            # The byte leaves at once, so THR is empty again: THRE re-arms.
            state[ST_THRE] = 1
            if state[ST_MCR] & MCR_LOOP:
                self._append_input(bytes((value,)))
                return
            length = self._tx_len[0]
            self.tx[length] = value
            self._tx_len[0] = length + 1
            return
        if offset == IER_DLM:
            if dlab:
                state[ST_DLM] = value
                return
            if value & IER_THR_EMPTY and not state[ST_IER] & IER_THR_EMPTY:
                state[ST_THRE] = 1  # as the 8250 driver's probe expects
            state[ST_IER] = value & IER_MASK
        elif offset == IIR_FCR:
            state[ST_FIFO] = value & FCR_ENABLE_FIFO
            if value & FCR_CLEAR_RX:
                self._clear_input()
        elif offset == LCR:
            state[ST_LCR] = value
        elif offset == MCR:
            state[ST_MCR] = value & MCR_MASK
        elif offset == SCR:
            state[ST_SCR] = value

    def _modem_status(self) -> int:
        state = self.state
        mcr = state[ST_MCR]
        if not mcr & MCR_LOOP:
            return state[ST_MSR]
        # Loopback wires the modem-control outputs back to the status inputs.
        value = state[ST_MSR] & MSR_DELTA_MASK
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
        state = self.state
        ier = state[ST_IER]
        if ier & IER_LINE_STATUS and state[ST_LSR] & LSR_OVERRUN:
            return IIR_LINE_STATUS
        if ier & IER_RX_DATA and state[ST_RX]:
            return IIR_RX_DATA
        if ier & IER_THR_EMPTY and state[ST_THRE]:
            return IIR_THR_EMPTY
        if ier & IER_MODEM_STATUS and state[ST_MSR] & MSR_DELTA_MASK:
            return IIR_MODEM_STATUS
        return IIR_NO_INTERRUPT

    def _update_interrupt(self) -> None:
        level = 0 if self._interrupt_identification() == IIR_NO_INTERRUPT else 1
        if level != self.state[ST_IRQ]:
            self.state[ST_IRQ] = level
            self._interrupt.set_level(bool(level))
