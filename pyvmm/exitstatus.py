"""pyvmm's exit-status contract, and why a run stopped.

Statuses pyvmm chooses itself are even, so they never collide with the odd
statuses a guest reports through the QEMU-compatible debug-exit port
(``(value << 1) | 1``).  The README documents the same table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitStatus(enum.IntEnum):
    """Process exit statuses of ``pyvmm run``."""

    #: The guest powered off or rebooted (or the user quit with Ctrl-A x).
    OK = 0
    #: Bad input: options, kernel, initrd, disk image (also click's usage errors).
    BAD_INPUT = 2
    #: The host can't run a VM: /dev/kvm missing or unusable, a capability missing.
    HOST_ERROR = 4
    #: A bug or unexpected failure inside pyvmm (device or vCPU code raised).
    VMM_ERROR = 6
    #: The guest crashed the virtual CPU: triple fault (KVM shutdown exit).
    GUEST_CRASHED = 8
    #: KVM could not run the guest: internal error, emulation failure, failed entry.
    KVM_FAILURE = 10
    #: The guest kernel reported a panic (pvpanic or a KVM crash event).
    GUEST_PANIC = 12
    #: ``--timeout`` expired, as timeout(1) reports it.
    TIMEOUT = 124
    #: Killed by a signal N: 128 + N (130 for SIGINT, 143 for SIGTERM).
    SIGNAL_BASE = 128


@dataclass(frozen=True)
class StopReason:
    """Why the machine stopped: a short kind, a line for humans, the exit status."""

    kind: str
    message: str
    status: int

    @classmethod
    def poweroff(cls, how: str = "the guest powered off") -> "StopReason":
        return cls("poweroff", how, ExitStatus.OK)

    @classmethod
    def reboot(cls, how: str = "the guest rebooted") -> "StopReason":
        return cls("reboot", how, ExitStatus.OK)

    @classmethod
    def debug_exit(cls, status: int) -> "StopReason":
        return cls("debug-exit", f"the guest reported exit status {status} "
                   "through the debug-exit port", status)

    @classmethod
    def timeout(cls, seconds: float) -> "StopReason":
        return cls("timeout", f"timed out after {seconds:g} s", ExitStatus.TIMEOUT)

    @classmethod
    def signal(cls, signum: int, name: str) -> "StopReason":
        return cls("signal", f"stopped by {name}", ExitStatus.SIGNAL_BASE + signum)

    @classmethod
    def user_quit(cls) -> "StopReason":
        return cls("quit", "quit from the console (Ctrl-A x)", ExitStatus.OK)

    @classmethod
    def stopped(cls, how: str = "stopped by its host program (Machine.stop)") -> "StopReason":
        """The program running the machine (``pyvmm.Machine.stop``) ended it."""
        return cls("stop", how, ExitStatus.OK)

    @classmethod
    def triple_fault(cls) -> "StopReason":
        return cls("triple-fault", "the guest triple-faulted (KVM shutdown exit)",
                   ExitStatus.GUEST_CRASHED)

    @classmethod
    def kvm_failure(cls, message: str) -> "StopReason":
        return cls("kvm-failure", message, ExitStatus.KVM_FAILURE)

    @classmethod
    def guest_panic(cls, message: str = "the guest kernel panicked") -> "StopReason":
        return cls("panic", message, ExitStatus.GUEST_PANIC)

    @classmethod
    def backend_failed(cls, message: str) -> "StopReason":
        """A helper process serving a device (virtiofsd) died or misbehaved."""
        return cls("backend", message, ExitStatus.VMM_ERROR)

    @classmethod
    def vmm_error(cls, message: str) -> "StopReason":
        return cls("vmm-error", message, ExitStatus.VMM_ERROR)
