"""Taking a dump of a machine: which events call for one, and collecting vCPU state."""

from __future__ import annotations

import logging
import time

from pyvmm.dump.core import write_core
from pyvmm.dump.state import VcpuRegisters
from pyvmm.exitstatus import StopReason

log = logging.getLogger(__name__)

#: Stop kinds that count as "the guest crashed" for --dump-on panic.
PANIC_KINDS = ("panic", "triple-fault", "kvm-failure")


def wanted(dump_on: tuple[str, ...], reason: StopReason) -> bool:
    """Whether a run that stopped for ``reason`` should leave a dump."""
    if "exit" in dump_on:
        return True
    if "panic" in dump_on and reason.kind in PANIC_KINDS:
        return True
    return "timeout" in dump_on and reason.kind == "timeout"


def vcpu_states(vcpus) -> list[VcpuRegisters]:
    """Registers of stopped (or paused) vCPUs, as the dump stores them."""
    return [VcpuRegisters.from_kvm(v.id, v.get_regs(), v.get_sregs()) for v in vcpus]


def dump_machine(path: str, memory, vcpus, reason: StopReason | None) -> float:
    """Write the dump; return the seconds it took."""
    start = time.monotonic()
    note = {"reason": reason.message if reason else "live dump (the guest was running)",
            "kind": reason.kind if reason else "live",
            "status": reason.status if reason else None}
    size = write_core(path, memory, vcpu_states(vcpus), note)
    elapsed = time.monotonic() - start
    log.info("wrote guest dump %s (%d MiB) in %.2f s", path, size >> 20, elapsed)
    return elapsed
