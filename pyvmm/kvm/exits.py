"""vCPU exits as small data objects.

``Vcpu.run()`` turns the kvm_run area into one of these; the machine's pure
dispatch function routes them to the buses.  ``data`` fields are memoryviews
into the kvm_run area: a handler fills an ``IoIn``/``MmioRead`` buffer in place
and KVM hands it to the guest on the next KVM_RUN.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.kvm._ffi import lib

# The numbers some exits carry, from <linux/kvm.h> through the compiled binding
# (the header is the ABI; a copy could drift from it).
#: ``InternalError.suberror``: what KVM could not do.
INTERNAL_ERROR_EMULATION = lib.KVM_INTERNAL_ERROR_EMULATION
INTERNAL_ERROR_SIMUL_EX = lib.KVM_INTERNAL_ERROR_SIMUL_EX
INTERNAL_ERROR_DELIVERY_EV = lib.KVM_INTERNAL_ERROR_DELIVERY_EV
INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
#: ``SystemEvent.type``.
SYSTEM_EVENT_SHUTDOWN = lib.KVM_SYSTEM_EVENT_SHUTDOWN
SYSTEM_EVENT_RESET = lib.KVM_SYSTEM_EVENT_RESET
SYSTEM_EVENT_CRASH = lib.KVM_SYSTEM_EVENT_CRASH


@dataclass(slots=True)
class IoIn:
    """The guest read ``size`` bytes from ``port`` (``count`` times for rep ins)."""

    port: int
    size: int
    data: memoryview


@dataclass(slots=True)
class IoOut:
    """The guest wrote ``data`` (``size`` bytes per element) to ``port``."""

    port: int
    size: int
    data: memoryview


@dataclass(slots=True)
class MmioRead:
    """The guest read ``len(data)`` bytes at guest-physical ``addr`` (not RAM)."""

    addr: int
    data: memoryview


@dataclass(slots=True)
class MmioWrite:
    """The guest wrote ``data`` at guest-physical ``addr`` (not RAM)."""

    addr: int
    data: memoryview


@dataclass(slots=True)
class Hlt:
    """HLT with no in-kernel irqchip to wait on (we always have one, so rare)."""


@dataclass(slots=True)
class Shutdown:
    """The guest triple-faulted (or otherwise shut the CPU down)."""


@dataclass(slots=True)
class SystemEvent:
    """A PSCI-/ACPI-like system event KVM reports (shutdown, reset, crash)."""

    type: int
    flags: int


@dataclass(slots=True)
class InternalError:
    """KVM could not go on: ``suberror`` says why; emulation failures carry bytes."""

    suberror: int
    data: tuple[int, ...]
    instruction: bytes | None


@dataclass(slots=True)
class FailEntry:
    """The hardware refused to enter the guest (bad vCPU state)."""

    reason: int
    cpu: int


@dataclass(slots=True)
class Interrupted:
    """KVM_RUN returned EINTR: the VMM kicked this vCPU (or immediate_exit was set)."""


@dataclass(slots=True)
class Debug:
    """A debug trap KVM_SET_GUEST_DEBUG asked for: ``exception`` 1 (#DB: single
    step or a debug register, ``dr6`` says which) or 3 (#BP: an ``int3``), at
    guest-virtual ``pc``."""

    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(slots=True)
class UnknownExit:
    """An exit reason pyvmm does not handle; carries the raw reason."""

    reason: int
    detail: int


VmExit = (IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | SystemEvent
          | InternalError | FailEntry | Interrupted | Debug | UnknownExit)
