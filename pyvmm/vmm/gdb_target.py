"""The machine as gdb's target: vCPUs held and released, registers, memory, debug traps.

The gdb session (``pyvmm.gdb.session``) runs on the event loop; the vCPUs
run on their own threads.  ``stop_all`` holds every runner (a kick takes it
out of KVM_RUN) and waits until each is parked; ``resume`` sets each vCPU's
KVM_SET_GUEST_DEBUG (software and hardware breakpoints, single-step) and
releases the ones gdb lets run.  A trap is seen on the vCPU's thread
(``on_exit``, called by ``pyvmm.vcpu.served`` before anything else): ours
holds every vCPU, records the stop and wakes the server; a guest ``int3``
that isn't ours is re-injected.  On kvm_pvm an ``int3`` reaches us as an
emulation failure instead of a debug exit; one at our breakpoint is a hit
(and the guest's own goes on to the emulation assist, which injects its #BP).
kvm_pvm delivers single steps and DR7 instruction breakpoints but never
fires a DR7 data breakpoint, so there watchpoints are refused, saying so.

While gdb holds the vCPUs ``held_seconds`` grows, so ``--timeout`` counts
only the time the guest may run.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Callable, Mapping, Sequence

from pyvmm.dump.pagewalk import PageWalkError, translate
from pyvmm.errors import DeviceError, GuestMemoryError, KvmError, PyvmmError
from pyvmm.gdb.debugregs import DR6_SINGLE_STEP, STOP_REASON, Z_HW_BREAK, slots_hit
from pyvmm.gdb.target import SIGTRAP, Debugging, MemoryFault, Stop
from pyvmm.kvm import system as kvm_system
from pyvmm.kvm._ffi import lib
from pyvmm.kvm.exits import Debug, InternalError
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.memory import GuestMemory
from pyvmm.vcpu.runner import VCPU_JOIN_SECONDS, VcpuRunners, VcpuPhase

log = logging.getLogger(__name__)

MSR_KERNEL_GS_BASE = 0xC000_0102
CR0_PG = 1 << 31
EFER_LMA = 1 << 10
INT3 = 0xCC
BREAKPOINT_VECTOR = 3
#: Measured with the tiny guests (images/tiny/int3.c): watch, rwatch and awatch
#: armed in DR7 never stop the guest on kvm_pvm; hbreak and stepi do.
PVM_NO_WATCHPOINTS = ("watchpoints are not available on kvm_pvm (this /dev/kvm never fires "
                      "DR7 data breakpoints): refused; hbreak, break and stepi work")
_WRITABLE = frozenset(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                       "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"))


class MachineTarget:
    """``pyvmm.gdb.target.Target`` over a machine's vCPUs, runners and RAM."""

    def __init__(self, vcpus: Sequence[Vcpu], runners: VcpuRunners, memory: GuestMemory,
                 kill: Callable[[], None]) -> None:
        self._vcpus = tuple(vcpus)
        self._pvm_host = kvm_system.is_pvm_host()
        self._runners = runners
        self._memory = memory
        self._kill = kill
        self._lock = threading.Lock()
        self._stop: Stop | None = None
        #: What the vCPUs trap for; None while no gdb is attached (traps pass to the guest).
        self._debugging: Debugging | None = None
        #: Written by a vCPU thread that stopped for gdb; the server watches it.
        self.notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._held_since: float | None = None
        self._held_total = 0.0
        #: KVM_GUESTDBG_BLOCKIRQ (Linux 5.16+) until a KVM refuses it.
        self._block_irq = lib.KVM_GUESTDBG_BLOCKIRQ

    @property
    def cpus(self) -> int:
        return len(self._vcpus)

    # -- time held -------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._held_since is not None

    def held_seconds(self) -> float:
        """How long gdb has held the guest stopped, in all (now included)."""
        since = self._held_since
        return self._held_total + (0.0 if since is None else time.monotonic() - since)

    def hold_at_start(self) -> None:
        """``--gdb-wait``: no vCPU runs until gdb lets it."""
        for runner in self._runners:
            runner.hold()
        self._held_since = time.monotonic()

    # -- registers ---------------------------------------------------------------------------

    def registers(self, cpu: int) -> dict[str, int]:
        vcpu = self._vcpus[cpu]
        regs, sregs, fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
        values = dict(regs)
        values["eflags"] = regs["rflags"]
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            values[name] = sregs[name]["selector"]
        values["fs_base"], values["gs_base"] = sregs["fs"]["base"], sregs["gs"]["base"]
        for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer"):
            values[name] = sregs[name]
        try:
            values["k_gs_base"] = vcpu.get_msr(MSR_KERNEL_GS_BASE)
        except PyvmmError:
            values["k_gs_base"] = 0
        for i in range(8):
            values[f"st{i}"] = fpu["st"][i]
        for i in range(16):
            values[f"xmm{i}"] = fpu["xmm"][i]
        values.update(fctrl=fpu["fcw"], fstat=fpu["fsw"], ftag=_full_tag(fpu["ftwx"]),
                      fiseg=0, fioff=fpu["last_ip"] & 0xFFFF_FFFF, foseg=0,
                      fooff=fpu["last_dp"] & 0xFFFF_FFFF, fop=fpu["fop"], mxcsr=fpu["mxcsr"])
        return values

    def set_registers(self, cpu: int, values: Mapping[str, int]) -> None:
        refused = sorted(set(values) - _WRITABLE)
        if refused:
            raise ValueError(f"pyvmm's gdb stub can't write {', '.join(refused)}")
        vcpu = self._vcpus[cpu]
        regs = vcpu.get_regs()
        for name, value in values.items():
            regs["rflags" if name == "eflags" else name] = value
        vcpu.set_regs(regs)

    # -- memory --------------------------------------------------------------------------------

    def translate(self, cpu: int, vaddr: int) -> int:
        sregs = self._vcpus[cpu].get_sregs()
        if not sregs["cr0"] & CR0_PG:
            return vaddr
        if not sregs["efer"] & EFER_LMA:
            raise MemoryFault("32-bit paging is not walked")
        try:
            return translate(self._memory.read_u64, sregs["cr3"], sregs["cr4"], vaddr).paddr
        except (PageWalkError, GuestMemoryError) as exc:
            raise MemoryFault(str(exc)) from None

    def read_physical(self, paddr: int, length: int) -> bytes:
        try:
            return self._memory.read(paddr, length)
        except GuestMemoryError as exc:
            raise MemoryFault(str(exc)) from None

    def write_physical(self, paddr: int, data: bytes) -> None:
        try:
            self._memory.write(paddr, data)
        except GuestMemoryError as exc:
            raise MemoryFault(str(exc)) from None

    # -- running --------------------------------------------------------------------------------

    def stop_all(self) -> None:
        for runner in self._runners:
            runner.hold()
        if self._held_since is None:
            self._held_since = time.monotonic()
        deadline = time.monotonic() + VCPU_JOIN_SECONDS
        for runner in self._runners:
            if not runner.wait_for((VcpuPhase.PAUSED, VcpuPhase.EXITED, VcpuPhase.CREATED),
                                   max(deadline - time.monotonic(), 0)):
                raise DeviceError(f"gdb: could not stop vCPU {runner.vcpu.id}")

    def resume(self, actions: Mapping[int, str], debugging: Debugging | None) -> None:
        with self._lock:
            self._stop = None
            self._debugging = debugging
        for cpu, vcpu in enumerate(self._vcpus):
            control = 0
            debugreg: tuple[int, ...] = (0,) * 8
            if debugging is not None:
                control = lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_SW_BP
                if debugging.debugreg[7]:
                    control |= lib.KVM_GUESTDBG_USE_HW_BP
                    debugreg = debugging.debugreg
                if actions.get(cpu) == "s":
                    # Interrupts wait while we step, or a step lands in a handler.
                    control |= lib.KVM_GUESTDBG_SINGLESTEP | self._block_irq
            try:
                vcpu.set_guest_debug(control, debugreg)
            except KvmError as exc:
                if not control & self._block_irq or exc.errno != errno.EINVAL:
                    raise
                log.info("gdb: this KVM can't hold interrupts off while stepping")
                self._block_irq = 0
                vcpu.set_guest_debug(control & ~lib.KVM_GUESTDBG_BLOCKIRQ, debugreg)
        if self._held_since is not None and actions:
            self._held_total += time.monotonic() - self._held_since
            self._held_since = None
        for cpu in actions:
            self._runners.runners[cpu].release()

    def take_stop(self) -> Stop | None:
        with self._lock:
            stop, self._stop = self._stop, None
            return stop

    def on_exit(self, cpu: int, exit: Debug | InternalError) -> bool:
        """On vCPU ``cpu``'s thread: True when the exit was a debug trap, now handled."""
        debugging = self._debugging
        if isinstance(exit, InternalError):  # kvm_pvm: a failed int3 at our breakpoint?
            if debugging is None or not exit.instruction or exit.instruction[0] != INT3:
                return False
            if self._vcpus[cpu].get_regs()["rip"] not in debugging.breakpoints:
                return False
            self._report(Stop(cpu, SIGTRAP, "swbreak"))
            return True
        if debugging is None:
            return True  # a trap armed before detach: nothing to report
        if exit.exception == BREAKPOINT_VECTOR:
            if exit.pc in debugging.breakpoints:
                self._report(Stop(cpu, SIGTRAP, "swbreak"))
            else:  # the guest's own int3: its #BP, as if we weren't here
                log.debug("vCPU %d: the guest's own int3 at %#x, its #BP re-injected", cpu,
                          exit.pc)
                self._vcpus[cpu].inject_exception(BREAKPOINT_VECTOR)
            return True
        slots = [s for s in slots_hit(exit.dr6) if s < len(debugging.hw_types)]
        if slots:
            kind = debugging.hw_types[slots[0]]
            self._report(Stop(cpu, SIGTRAP, STOP_REASON[kind], debugging.debugreg[slots[0]]))
        else:
            if not exit.dr6 & DR6_SINGLE_STEP:
                log.debug("vCPU %d: debug exit with DR6 %#x", cpu, exit.dr6)
            self._report(Stop(cpu, SIGTRAP))
        return True

    def _report(self, stop: Stop) -> None:
        with self._lock:
            if self._stop is None:
                self._stop = stop
        for runner in self._runners:
            runner.hold()
        os.eventfd_write(self.notify_fd, 1)

    # -- the rest -------------------------------------------------------------------------------

    def describe(self, cpu: int) -> str:
        state = self._runners.runners[cpu].state
        return f"vCPU {cpu} ({state.value})"

    def monitor(self, command: str) -> str:
        words = command.split(maxsplit=1)
        if words and words[0] == "dump" and len(words) == 2:
            from pyvmm.dump.capture import dump_machine

            path = words[1].strip()
            try:
                seconds = dump_machine(path, self._memory, self._vcpus, None)
            except (OSError, PyvmmError) as exc:
                return f"dump failed: {exc}\n"
            return f"guest dump written to {path} in {seconds:.2f} s\n"
        raise ValueError(f"unknown monitor command {command!r}")

    def point_unavailable(self, kind: int) -> str | None:
        return PVM_NO_WATCHPOINTS if self._pvm_host and kind != Z_HW_BREAK else None

    def kill(self) -> None:
        self._kill()

    def close(self) -> None:
        os.close(self.notify_fd)


def _full_tag(abridged: int) -> int:
    """x87 tag word from FXSAVE's abridged one: 00 (valid) where set, 11 (empty) where not."""
    return sum((0 if abridged & (1 << i) else 3) << (2 * i) for i in range(8))
