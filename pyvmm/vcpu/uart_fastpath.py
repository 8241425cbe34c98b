"""COM1's hot registers off Python's path: where a console's output spends its exits.

Linux's 8250 driver costs exits per character in both of its modes:

* **polled** (printk's console): an LSR read before each byte, then the byte
  written to THR: two exits per character.
* **interrupt-driven** (user space writing to ttyS0: systemd, getty, a
  shell): IER's THR-empty bit on, then per interrupt an IIR, an LSR and an MSR
  read and up to 16 THR writes, each re-arming the THR-empty interrupt, until
  the buffer is empty and the bit goes off again.

Here:

* **THR writes are coalesced** (``KVM_CAP_COALESCED_PIO``) only while the
  UART says a THR write has no effect but its byte (``Serial.tx_polled``: no
  THR-empty interrupt, no loopback): KVM queues them in its ring page instead
  of exiting.  The ring is drained in order into ``Serial.transmit`` before
  any exit is served in Python (so a write is always seen before the access
  that followed it) and on the event loop's timer.  When the guest enables the
  THR-empty interrupt, the zone is unregistered (after a drain) and each write
  exits again, so its interrupt follows it at once.  A write's slot is freed
  only once its byte is the UART's: a vCPU that finds the ring empty may write
  THR itself.  When the ring is full KVM lets the next write exit: Python drains
  the ring, then serves it (``pio-out-full`` in ``--stats``: back-pressure).
* **The hot accesses are served in C** (``pyvmm_run_uart_fast``, a KVM_RUN
  loop in this module's own cffi module, built by ``_uart_build.py``), on the
  Serial's own state (``Serial.state``, ``Serial.tx``, ``Serial.rx``) under a
  lock Python takes too (``Serial.share``): RBR reads (from the Serial's input
  ring: a typed line costs no exit per byte), THR writes (into its output buffer;
  an eventfd, the event loop's, wakes it when output starts waiting and at
  each newline, and ``Serial.flush_due`` writes it out), IIR, LSR, MSR and IER
  reads, IER writes, and the interrupt line they change (KVM_IRQ_LINE on the
  VM's fd, the same call Python makes).  An LSR read when the newest coalesced byte
  is a newline wakes the event loop too, which drains the ring and writes the
  line out as it completes.  The loop returns to Python for every other access
  and exit, and for a THR write when the output buffer is full (Python flushes
  it: a slow stdout slows the guest down), the ring holds older writes (Python
  has yet to drain it: older bytes first), or THR writes are coalesced (the
  write exited because the ring was full).
  The KVM binding lends it the vCPU's fd, its kvm_run mapping and the ring
  page, by address.
* **Switching costs KVM an SRCU grace period** (a zone (un)registered), so
  it happens rarely: user space's bursts turn the THR-empty interrupt on and
  off around every write(2), and only the first "on" after coalescing goes
  to Python, which unregisters the zone.  After that the C side serves both,
  and serves polled THR writes too; once ``COALESCE_AFTER`` of those came in
  a row (a boot log, not a kernel message between two bursts), the loop
  returns for Python to register the zone again (``uart-switch`` in
  ``--stats``), which it does only if ``tx_polled`` still holds.

``Serial`` stays the reference for every register (the register tests run
against it and against this pair), and ``PYVMM_UART_FASTPATH`` (``on``,
``coalesce``, ``c``, ``off``) turns either half off for comparison.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pyvmm.devices.serial import (RBR_THR_DLL, ST_DLL, ST_DLM, ST_FIFO, ST_IER, ST_IRQ,
                                  ST_LCR, ST_LSR, ST_MCR, ST_MSR, ST_RX, ST_RX_HEAD, ST_RX_LEN,
                                  ST_SCR, ST_THRE, ST_TX_LEN, STATE_BYTES, Serial)
from pyvmm.errors import HostError, KvmError
from pyvmm.host import environment
from pyvmm.kvm.exits import VmExit
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

if TYPE_CHECKING:
    from pyvmm.vcpu.interrupt_status import InterruptRegistersOffPython

try:
    from pyvmm.vcpu._uart_cffi import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise HostError(
        "the UART fast path is not built (pyvmm/vcpu/_uart_cffi); "
        "reinstall with 'pip install -e .' on a machine with gcc and <linux/kvm.h>"
    ) from exc

log = logging.getLogger(__name__)

#: Ring entries copied per drain call (the ring holds 170 with 4 KiB pages).
_DRAIN_BATCH = 256
#: How soon the event loop drains the ring again after finding bytes in it (while
#: THR writes are coalesced: a line without its newline yet, like a prompt).
RING_POLL_SECONDS = 0.02
#: The longest wait between drains: each empty one doubles the wait up to this, so
#: a quiet guest doesn't wake the VMM 50 times a second (a spinning tiny guest, 3 s:
#: 149 event-loop wake-ups before, 14 after; Python's CPU, not a boot time, is saved).
RING_POLL_IDLE_SECONDS = 0.32
#: Polled THR writes the C side serves in a row (the THR-empty interrupt off since the
#: last one) before it asks for coalescing again: a kernel message or two between
#: user space's bursts stays in C, a boot log gets coalesced.
COALESCE_AFTER = 512
#: ``Serial.state``'s offsets and the C struct's fields, which must agree.
STATE_FIELDS = {"ier": ST_IER, "lcr": ST_LCR, "mcr": ST_MCR, "lsr": ST_LSR, "msr": ST_MSR,
                "scr": ST_SCR, "fifo": ST_FIFO, "thre": ST_THRE, "irq": ST_IRQ, "rx": ST_RX,
                "dll": ST_DLL, "dlm": ST_DLM, "tx_len": ST_TX_LEN, "rx_head": ST_RX_HEAD,
                "rx_len": ST_RX_LEN}


def wanted_halves(setting: str | None) -> tuple[bool, bool]:
    """(coalesce THR, registers in C) for a PYVMM_UART_FASTPATH value."""
    setting = (setting or "on").lower()
    return setting in ("on", "coalesce"), setting in ("on", "c")


class UartRegistersInC:
    """The C side of one Serial's registers: its state, shared with it, and its line.

    ``access`` serves an access as the C loop does (for tests); the loop takes
    ``block``.  ``vm_fd`` -1 drives no line (the level is still kept and the
    changes counted in ``block.irq_changes``).
    """

    def __init__(self, serial: Serial, vm_fd: int, gsi: int) -> None:
        if ffi.sizeof("pyvmm_uart_state") != STATE_BYTES or any(
                ffi.offsetof("pyvmm_uart_state", name) != offset
                for name, offset in STATE_FIELDS.items()):
            raise HostError("the UART fast path's compiled module does not match "
                            "pyvmm/devices/serial.py; rebuild it ('pip install -e .')")
        self._state = ffi.from_buffer(serial.state)  # keep both buffers' exports alive
        self._tx = ffi.from_buffer(serial.tx)
        self._rx = ffi.from_buffer(serial.rx)
        self.block = ffi.new("pyvmm_uart *", {
            "state": ffi.cast("pyvmm_uart_state *", self._state), "tx": self._tx,
            "tx_capacity": len(serial.tx), "rx": self._rx, "rx_capacity": len(serial.rx),
            "vm_fd": vm_fd, "gsi": gsi, "wake_fd": -1})
        ret = lib.pyvmm_uart_init(self.block)
        if ret:
            raise HostError(f"the UART fast path's lock: {os.strerror(-ret)}")
        self._byte = ffi.new("__u8 *")
        serial.share(_LockInC(self.block), _LineInC(self.block))

    def access(self, offset: int, write: bool, value: int = 0) -> int | None:
        """What ``pyvmm_uart_access`` does with a 1-byte access: the value read (or
        ``value`` written), or None when it leaves the access to Python."""
        self._byte[0] = value
        if not lib.pyvmm_uart_access(self.block, offset, int(write), self._byte):
            return None
        return int(self._byte[0])

    def wake_on_output(self, fd: int) -> None:
        """Write the eventfd ``fd`` (-1: none) when output starts waiting in ``Serial.tx``,
        at each newline there, and when a polled line is complete in the ring."""
        with _LockInC(self.block):
            self.block.wake_fd = fd

    @property
    def lock(self) -> AbstractContextManager[object]:
        """The lock the C side and the Serial share."""
        return _LockInC(self.block)

    def close(self) -> None:
        """No more wake-ups nor ioctls from C (a vCPU thread that would not stop included)."""
        with _LockInC(self.block):
            self.block.wake_fd = -1
            self.block.vm_fd = -1


class _LockInC:
    """The UART's pthread mutex as a context manager (waiting for it holds no GIL)."""

    def __init__(self, block: Any) -> None:
        self._block = block

    def __enter__(self) -> None:
        lib.pyvmm_uart_lock(self._block)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        lib.pyvmm_uart_unlock(self._block)


class _LineInC:
    """The UART's interrupt line, driven by the C function the loop uses (lock held)."""

    def __init__(self, block: Any) -> None:
        self._block = block

    def set_level(self, high: bool) -> None:
        ret = lib.pyvmm_uart_drive_irq(self._block, 1 if high else 0)
        if ret < 0:
            raise KvmError("KVM_IRQ_LINE", -ret)


class UartFastPath:
    """Coalesced THR writes and the hot registers in C for one UART at ``base_port``."""

    def __init__(self, kvm: Kvm, vm: Vm, vcpus: list[Vcpu], serial: Serial,
                 base_port: int, irq: int, setting: str | None = None,
                 interrupts: InterruptRegistersOffPython | None = None) -> None:
        coalesce, in_c = wanted_halves(setting if setting is not None
                                       else environment.UART_FASTPATH.get())
        self._vm = vm
        self._serial = serial
        self.base_port = base_port
        self.thr_port = base_port + RBR_THR_DLL
        self._lock = threading.Lock()  # one consumer of the ring at a time
        self._switch_lock = threading.Lock()  # one coalescing switch at a time
        self._ring: Any = None
        if coalesce and kvm.has_coalesced_pio():
            self._ring = ffi.cast("struct kvm_coalesced_mmio_ring *",
                                  vcpus[0].coalesced_ring_address())
        self._drained = ffi.new("__u8[]", _DRAIN_BATCH)
        self._poll_seconds = RING_POLL_SECONDS
        self.coalescing = False
        #: THR writes that came through the ring (for --stats).
        self.coalesced_writes = 0
        #: Returns from the C loop to coalesce again, per vCPU (for --stats).
        self._switches: dict[int, int] = {}
        #: The registers' C side (None with the C half off: Python serves them all).
        self.registers = UartRegistersInC(serial, vm.fd, irq) if in_c else None
        #: Virtio InterruptStatus reads the C loop answers too (``interrupt_status``); it
        #: runs for them even with COM1's registers all Python's.
        self._interrupts = interrupts
        in_loop = in_c or interrupts is not None
        self._fast = {vcpu.id: self._c_loop_arguments(vcpu) for vcpu in vcpus} if in_loop else {}
        if self._ring is not None:
            serial.on_tx_polled = self._tx_polled_changes
            if self.registers is not None:
                self.registers.block.coalesce_after = COALESCE_AFTER
            self._set_coalescing(serial.tx_polled)

    def _c_loop_arguments(self, vcpu: Vcpu) -> Any:
        """The ``pyvmm_uart_fast`` block ``pyvmm_run_uart_fast`` runs ``vcpu`` with."""
        return ffi.new("pyvmm_uart_fast *", {
            "fd": vcpu.fd, "run": ffi.cast("struct kvm_run *", vcpu.run_address),
            "ring": self._ring if self._ring is not None else ffi.NULL,
            "uart": self.registers.block if self.registers is not None else ffi.NULL,
            "base_port": self.base_port,
            "status": self._interrupts.table if self._interrupts is not None else ffi.NULL})

    def _tx_polled_changes(self, polled: bool) -> None:
        """``Serial.on_tx_polled``: a register write Python serves is about to change it."""
        if not polled:
            self._set_coalescing(False)  # THR writes must exit before the write takes effect
        elif self.registers is None:
            self._set_coalescing(True)
        # else the C side serves polled THR writes and asks for coalescing once they flow:
        # user space's bursts toggle the THR-empty interrupt without a switch each.

    def _set_coalescing(self, on: bool) -> None:
        """Register (or unregister) THR's coalesced zone, if it is not already: only while
        ``Serial.tx_polled``, checked under the lock the C side serves IER writes under."""
        with self._switch_lock:
            if on == self.coalescing:
                return
            self.drain()  # what the ring holds was written under the old mode
            registers = self.registers
            if registers is None:
                self._vm.coalesce_pio(self.thr_port, 1, on)
            else:
                with registers.lock:
                    if on and not self._serial.tx_polled:
                        return  # the THR-empty interrupt came on meanwhile
                    self._vm.coalesce_pio(self.thr_port, 1, on)
                    registers.block.coalescing = int(on)
                    registers.block.polled_writes = 0
            self.coalescing = on
            log.debug("COM1 THR writes %s", "coalesced" if on else "exit again")

    def wake_on_output(self, fd: int) -> None:
        """Have the C side write the eventfd ``fd`` (the event loop's) when output it
        served starts waiting, so that ``Serial.flush_due`` runs."""
        if self.registers is not None:
            self.registers.wake_on_output(fd)

    def run(self, vcpu: Vcpu) -> VmExit:
        """KVM_RUN on ``vcpu``, the hot registers served in C if enabled; then call
        ``drain_pending``."""
        fast = self._fast.get(vcpu.id)
        if fast is None:
            return vcpu.run()
        ret = lib.pyvmm_run_uart_fast(fast)
        while ret == lib.PYVMM_UART_COALESCE:  # polled output flows: let KVM queue it
            self._switches[vcpu.id] = self._switches.get(vcpu.id, 0) + 1
            self._set_coalescing(True)
            ret = lib.pyvmm_run_uart_fast(fast)
        if ret == lib.PYVMM_UART_IRQ_FAILED:
            raise KvmError("KVM_IRQ_LINE", fast.uart.irq_errno)
        return vcpu.finish_run(ret)

    def drain_pending(self) -> bool:
        """``drain`` if the ring holds anything (before serving any exit); whether it did."""
        ring = self._ring
        if ring is not None and ring.first != ring.last:
            self.drain()
            return True
        return False

    def outran(self, vcpu: Vcpu, ring_held: bool) -> bool:
        """Whether the THR write ``vcpu`` exited with reached Python only because the guest
        wrote faster than its output drains.  With the C side, as the C loop saw it when
        it left the write (its ``thr_outran``): the ring held writes, THR writes are
        coalesced (one exits only when KVM's ring is full, though the event loop may have
        drained it since), or ``tx`` was full (it may be flushed since).  Without it: the
        ring held writes (``ring_held``: ``drain_pending`` found them), or they are
        coalesced.  (Without these, this path serves every THR write without Python.)"""
        fast = self._fast.get(vcpu.id)
        if fast is not None and self.registers is not None:
            return bool(fast.thr_outran)
        return ring_held or (self._ring is not None and self.coalescing)

    def served_in_c(self, vcpu: Vcpu) -> dict[tuple[str, int], int]:
        """What the C loop served for ``vcpu``, as --stats keys: by direction and port, its
        returns to Python to coalesce again (``uart-switch``), and virtio InterruptStatus
        reads (``mmio-read-c``)."""
        fast = self._fast.get(vcpu.id)
        if fast is None:
            return {}
        served = {} if self._interrupts is None else self._interrupts.reads_served(fast)
        if self._switches.get(vcpu.id):
            served[("uart-switch", self.thr_port)] = self._switches[vcpu.id]
        for offset in range(8):
            for kind, counts in (("pio-in-c", fast.served_in), ("pio-out-c", fast.served_out)):
                if counts[offset]:
                    served[(kind, self.base_port + offset)] = int(counts[offset])
        return served

    def acks_absorbed(self) -> dict[tuple[str, int], int]:
        """The virtio InterruptACK writes KVM absorbed (``interrupt_status``), as --stats
        keys."""
        return {} if self._interrupts is None else self._interrupts.acks_absorbed()

    def poll(self) -> float:
        """``drain`` on the event loop's timer; seconds until it should poll again."""
        before = self.coalesced_writes
        self.drain()
        if self.coalesced_writes != before:
            self._poll_seconds = RING_POLL_SECONDS
        else:
            self._poll_seconds = min(2 * self._poll_seconds, RING_POLL_IDLE_SECONDS)
        return self._poll_seconds

    def drain(self) -> None:
        """Apply the coalesced THR writes, oldest first (any thread)."""
        ring = self._ring
        if ring is None:
            return
        with self._lock:  # one consumer at a time, and batches reach the UART in order
            while ring.first != ring.last:
                count = lib.pyvmm_coalesced_copy(ring, self._drained, _DRAIN_BATCH)
                self._serial.transmit(ffi.buffer(self._drained, count)[:])
                # Only now: a vCPU that finds the ring empty writes THR after these bytes.
                lib.pyvmm_coalesced_free(ring, count)
                self.coalesced_writes += count

    def close(self) -> None:
        """Stop coalescing and apply what is left (before the vCPUs' mappings go); the
        C side wakes and drives nothing any more."""
        self.drain()
        self._ring = None
        self._fast = {}
        if self.registers is not None:
            self.registers.close()
