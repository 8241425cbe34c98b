"""Finishing the instructions a software-emulating KVM gives up on.

``kvm_pvm`` (KVM that emulates non-PVM guests instruction by instruction)
stops with an emulation failure on a few instructions a Linux boot runs,
and reports their bytes.  Two have a sound meaning the VMM can carry out
itself through the KVM API, so the guest goes on:

* ``int3`` (the kernel's alternatives self-test runs one): a #BP trap.  The
  VMM moves RIP past the instruction and injects vector 3 with
  KVM_SET_VCPU_EVENTS; the guest's IDT handler runs as on hardware.
* ``fwait``: waits for pending unmasked x87 exceptions.  Linux runs it only
  to flush such exceptions when it drops a task's FPU state; none are
  pending at that point in an emulated guest, so it is skipped.

This is used only after KVM has already failed (an ``InternalError`` exit),
never on the normal path, and only when enabled (``--emulation-assist``; on
by default where /dev/kvm is kvm_pvm).  Anything else still stops the VM with
the explained failure.
"""

from __future__ import annotations

from dataclasses import dataclass

# KVM_INTERNAL_ERROR_EMULATION is the only failure that carries instruction bytes.
from pyvmm.kvm.exits import INTERNAL_ERROR_EMULATION, InternalError

INT3 = 0xCC
FWAIT = 0x9B
BREAKPOINT_VECTOR = 3


@dataclass(frozen=True)
class Assist:
    """What to do: advance RIP by ``length``, then inject ``vector`` if not None."""

    name: str
    length: int
    vector: int | None = None


def plan_assist(exit: InternalError) -> Assist | None:
    """The assist for a failed instruction, or None when there is none."""
    code = exit.instruction
    if exit.suberror != INTERNAL_ERROR_EMULATION or not code:
        return None
    if code[0] == INT3:
        return Assist("int3", 1, BREAKPOINT_VECTOR)
    if code[0] == FWAIT:
        return Assist("fwait", 1)
    return None
