"""COM1's two hottest registers off Python's path: where a verbose boot spends its exits.

Linux's 8250 console polls the line-status register (LSR) before each byte
and then writes the byte to THR: two exits per character, 97% of a verbose
boot's exits.  Here:

* **THR writes are coalesced** (``KVM_CAP_COALESCED_PIO``): KVM queues them in
  its ring page instead of exiting, for as long as the UART says a THR write
  has no effect but its byte (``Serial.tx_polled``: no THR-empty interrupt, no
  loopback; the 8250 console driver masks the interrupts while it prints).
  The ring is drained in order into ``Serial.transmit`` before any exit is
  served (so a write is always seen before the access that followed it) and
  on the event loop's timer.  When the guest enables the THR-empty interrupt,
  the zone is unregistered and each write exits again, so the interrupt
  follows the write at once.
* **LSR reads, IER reads and IER writes that change nothing are answered in C**
  (``pyvmm_run_uart_fast``, a KVM_RUN loop in this module's own cffi module,
  built by ``_uart_build.py``) from ``Serial.cells``, what the Python UART
  would answer (the console driver reads IER, clears it and restores it around
  every message).  The loop returns to Python for every other exit, and when
  the newest coalesced byte is a newline, so each line is drained and written
  out as it completes.  The KVM binding lends it the vCPU's fd, its kvm_run
  mapping and the ring page, by address.

``Serial`` stays the reference for every register, and ``PYVMM_UART_FASTPATH``
(``on``, ``coalesce``, ``c``, ``off``) turns either half off for comparison.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pyvmm.devices.serial import (CELL_IER, CELL_IER_VALID, CELL_LSR, IER_DLM, LSR,
                                  RBR_THR_DLL, Serial)
from pyvmm.errors import HostError
from pyvmm.host import environment
from pyvmm.kvm.exits import VmExit
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

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


def wanted_halves(setting: str | None) -> tuple[bool, bool]:
    """(coalesce THR, LSR in C) for a PYVMM_UART_FASTPATH value."""
    setting = (setting or "on").lower()
    return setting in ("on", "coalesce"), setting in ("on", "c")


class UartFastPath:
    """Coalesced THR writes and LSR reads in C for one UART at ``base_port``."""

    def __init__(self, kvm: Kvm, vm: Vm, vcpus: list[Vcpu], serial: Serial,
                 base_port: int, setting: str | None = None) -> None:
        coalesce, in_c = wanted_halves(setting if setting is not None
                                       else environment.UART_FASTPATH.get())
        self._vm = vm
        self._serial = serial
        self.thr_port = base_port + RBR_THR_DLL
        self.lsr_port = base_port + LSR
        self.ier_port = base_port + IER_DLM
        self._lock = threading.Lock()
        self._ring: Any = None
        if coalesce and kvm.has_coalesced_pio():
            self._ring = ffi.cast("struct kvm_coalesced_mmio_ring *",
                                  vcpus[0].coalesced_ring_address())
        self._drained = ffi.new("__u8[]", _DRAIN_BATCH)
        self._poll_seconds = RING_POLL_SECONDS
        self.coalescing = False
        #: THR writes that came through the ring (for --stats).
        self.coalesced_writes = 0
        self._cells = ffi.from_buffer("__u8[]", serial.cells)
        self._fast = {vcpu.id: self._c_loop_arguments(vcpu) for vcpu in vcpus} if in_c else {}
        if self._ring is not None:
            serial.on_tx_polled = self._set_coalescing
            self._set_coalescing(serial.tx_polled)

    def _c_loop_arguments(self, vcpu: Vcpu) -> Any:
        """The ``pyvmm_uart_fast`` block ``pyvmm_run_uart_fast`` runs ``vcpu`` with."""
        cells = self._cells
        return ffi.new("pyvmm_uart_fast *", {
            "fd": vcpu.fd, "run": ffi.cast("struct kvm_run *", vcpu.run_address),
            "ring": self._ring if self._ring is not None else ffi.NULL,
            "lsr": cells + CELL_LSR, "ier": cells + CELL_IER, "ier_valid": cells + CELL_IER_VALID,
            "lsr_port": self.lsr_port, "ier_port": self.ier_port})

    def _set_coalescing(self, on: bool) -> None:
        if on != self.coalescing:
            self.drain()  # what the ring holds was written under the old mode
            self._vm.coalesce_pio(self.thr_port, 1, on)
            self.coalescing = on
            log.debug("COM1 THR writes %s", "coalesced" if on else "exit again")

    def run(self, vcpu: Vcpu) -> VmExit:
        """KVM_RUN on ``vcpu``, LSR polls answered in C if enabled; then call ``drain_pending``."""
        fast = self._fast.get(vcpu.id)
        return vcpu.run() if fast is None else vcpu.finish_run(lib.pyvmm_run_uart_fast(fast))

    def drain_pending(self) -> None:
        """``drain`` if the ring holds anything: before serving any exit."""
        ring = self._ring
        if ring is not None and ring.first != ring.last:
            self.drain()

    def served_in_c(self, vcpu: Vcpu) -> dict[tuple[str, int], int]:
        """What the C loop answered for ``vcpu``, as --stats keys: LSR, IER reads, IER writes."""
        fast = self._fast.get(vcpu.id)
        if fast is None:
            return {}
        return {("pio-in-c", self.lsr_port): int(fast.lsr_reads),
                ("pio-in-c", self.ier_port): int(fast.ier_reads),
                ("pio-out-c", self.ier_port): int(fast.ier_writes)}

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
                count = lib.pyvmm_coalesced_drain(ring, self._drained, _DRAIN_BATCH)
                self.coalesced_writes += count
                self._serial.transmit(ffi.buffer(self._drained, count)[:])

    def close(self) -> None:
        """Stop coalescing and apply what is left (before the vCPUs' mappings go)."""
        self.drain()
        self._ring = None
        self._fast = {}
