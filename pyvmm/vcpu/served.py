"""A vCPU as its runner sees it: KVM_RUN (through the UART fast path) and exits served.

``ServedVcpu.run`` enters the guest and applies the UART writes KVM
coalesced meanwhile, so they are seen before the exit that followed them;
``serve`` finishes instructions a software-emulating KVM failed on
(``pyvmm.vcpu.emulation_assist``) or routes the exit to the buses
(``pyvmm.vcpu.dispatch``).  With ``--stats`` both are timed per exit kind.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from pyvmm.vcpu.dispatch import AccessBus, UnknownAccessLog, dispatch_exit
from pyvmm.vcpu.emulation_assist import plan_assist
from pyvmm.exitstatus import StopReason
from pyvmm.kvm.exits import Debug, InternalError, VmExit
from pyvmm.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from pyvmm.vcpu.stats import ExitKey, RunStats
    from pyvmm.vcpu.uart_fastpath import UartFastPath

log = logging.getLogger(__name__)


class ServedVcpu:
    """One vCPU's KVM_RUN and exit handling, shared state passed in (buses, counters)."""

    def __init__(self, vcpu: Vcpu, pio: AccessBus, mmio: AccessBus, unknown: UnknownAccessLog,
                 fast: UartFastPath | None, stats: RunStats | None, pvm_host: bool,
                 assist: bool, assists: dict[str, int]) -> None:
        self.vcpu = vcpu
        self.id = vcpu.id
        self._pio, self._mmio, self._unknown = pio, mmio, unknown
        self._fast = fast
        self._stats = stats
        self._counter = None if stats is None else stats.counter()
        self._pvm_host = pvm_host
        self._assist_on = assist
        #: Instructions finished for the emulator, by name (shared by the machine's vCPUs).
        self.assists = assists
        self._returned = 0
        #: KVM's ring held THR writes at the last exit (the guest's output outran the drain).
        self._ring_held = False
        self._first = True
        #: A debugger's look at debug traps and failed int3s first (``pyvmm.vmm.gdb_target``):
        #: True when it took the exit.
        self.debugger: Callable[[int, Debug | InternalError], bool] | None = None

    def request_exit(self) -> None:
        self.vcpu.request_exit()

    def run(self) -> VmExit:
        """KVM_RUN until the next exit; the UART's coalesced writes applied first."""
        vcpu, fast, counter = self.vcpu, self._fast, self._counter
        if self._first and self._stats is not None:
            self._first = False
            self._stats.note_first_run()
        if counter is None:
            exit = vcpu.run() if fast is None else fast.run(vcpu)
        else:
            entered = time.perf_counter_ns()
            exit = vcpu.run() if fast is None else fast.run(vcpu)
            self._returned = time.perf_counter_ns()
            counter.in_kvm_ns += self._returned - entered
        if fast is not None:
            self._ring_held = fast.drain_pending()  # writes made before this exit come first
        return exit

    def serve(self, exit: VmExit) -> StopReason | None:
        """Serve one exit; why to stop, or None to run on."""
        key = self._stats_key(exit) if self._counter is not None else None
        if isinstance(exit, (Debug, InternalError)) and self.debugger is not None \
                and self.debugger(self.id, exit):
            reason = None
        elif isinstance(exit, InternalError) and self._assist_on and self._assist(exit):
            reason = None
        else:
            reason = dispatch_exit(exit, self._pio, self._mmio, self._unknown,
                                   self._read_rip, self._pvm_host)
        if self._counter is not None and key is not None:
            self._counter.add(key, time.perf_counter_ns() - self._returned)
        return reason

    def _stats_key(self, exit: VmExit) -> ExitKey:
        """What --stats counts ``exit`` as (before it is served: serving changes the UART).
        A THR write the fast path let exit only because the guest's output outran its
        drain is ``pio-out-full``: back-pressure, not a write the fast path missed."""
        from pyvmm.vcpu.stats import exit_key  # only with --stats

        key = exit_key(exit)
        fast = self._fast
        if fast is not None and key == ("pio-out", fast.thr_port) \
                and fast.outran(self.vcpu, self._ring_held):
            return ("pio-out-full", fast.thr_port)
        return key

    def finished(self) -> None:
        """The thread is done: count what the C loop answered without Python."""
        if self._counter is not None and self._fast is not None:
            for key, count in self._fast.served_in_c(self.vcpu).items():
                self._counter.add_uncounted(key, count)

    def _read_rip(self) -> int:
        return self.vcpu.get_regs()["rip"]

    def _assist(self, exit: InternalError) -> bool:
        """Carry out an instruction KVM's emulator failed on, if we soundly can."""
        assist = plan_assist(exit)
        if assist is None:
            return False
        vcpu = self.vcpu
        regs = vcpu.get_regs()
        regs["rip"] += assist.length
        vcpu.set_regs(regs)
        if assist.vector is not None:
            vcpu.inject_exception(assist.vector)
        self.assists[assist.name] = self.assists.get(assist.name, 0) + 1
        log.debug("vCPU %d: finished %s for the emulator at RIP %#x", vcpu.id, assist.name,
                  regs["rip"] - assist.length)
        return True
