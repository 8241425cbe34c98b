"""A VM made ahead for the process's next restore: its KVM_CREATE_VM out of the restore's path.

A VM's creation (``KVM_CREATE_VM``, the TSS, the in-kernel irqchip and PIT,
the vCPUs) depends on nothing in a snapshot but its vCPU count, and in the rig
``KVM_CREATE_VM`` alone took 11-20 ms of a restore's 20-45 ms assembly.  When
a restored machine is closed, the process makes a spare for the next restore
(a pytest fixture restores one clone per test); the next restore with as many
vCPUs takes it, any other gets a VM made as usual.

The spare is the process's: a forked child never uses it (KVM refuses a VM's
ioctls from another process) and closes only its own copies of the fds; it is
closed at the interpreter's exit (``atexit``) or by ``discard``.  Made while the
closing machine's caller waits (in a suite, between two tests), not on a
thread of its own: on a single CPU that thread would compete with the next
clone's guest.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass

from pyvmm.errors import PyvmmError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

log = logging.getLogger(__name__)

#: Three pages Intel VMX needs for its real-mode TSS, just below the BIOS ROM.
KVM_TSS_ADDRESS = 0xFFFB_D000


@dataclass
class ReadyVm:
    """/dev/kvm and a VM with its TSS, irqchip, PIT and vCPUs made, no memory yet."""

    kvm: Kvm
    vm: Vm
    vcpus: list[Vcpu]

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()
        self.kvm.close()


def make_vm(kvm: Kvm, cpus: int) -> tuple[Vm, list[Vcpu]]:
    """A new VM on ``kvm`` as every machine starts: TSS, in-kernel irqchip and PIT, ``cpus``
    vCPUs (made after the irqchip, so each has its local APIC)."""
    vm = kvm.create_vm()
    try:
        vm.set_tss_address(KVM_TSS_ADDRESS)
        vm.create_irqchip()
        vm.create_pit2()
        vcpus: list[Vcpu] = []
        try:
            for index in range(cpus):
                vcpus.append(vm.create_vcpu(index))
        except BaseException:
            for vcpu in vcpus:
                vcpu.close()
            raise
    except BaseException:
        vm.close()
        raise
    return vm, vcpus


_lock = threading.Lock()
#: (the pid that made it, the /dev/kvm path, the spare) or None.
_spare: list[tuple[int, str, ReadyVm]] = []


def take(path: str, cpus: int) -> ReadyVm | None:
    """The spare if this process has one on ``path`` with ``cpus`` vCPUs (it is then the
    caller's to close), else None (a spare that doesn't fit is closed)."""
    with _lock:
        if not _spare:
            return None
        pid, spare_path, ready = _spare.pop()
    if pid == os.getpid() and spare_path == path and len(ready.vcpus) == cpus:
        return ready
    ready.close()  # another vCPU count, or a forked child's copy of its parent's spare
    return None


def prepare(path: str, cpus: int) -> None:
    """Make a spare VM with ``cpus`` vCPUs on ``path`` for the next restore, unless there is
    one; a failure (a host out of resources) only leaves the next restore to make its own."""
    with _lock:
        if _spare and _spare[0][0] == os.getpid():
            return
        for _, _, inherited in _spare:  # a forked child's copy of its parent's spare
            inherited.close()  # its copies of the fds only
        _spare.clear()
        try:
            kvm = Kvm(path)
            try:
                vm, vcpus = make_vm(kvm, cpus)
            except BaseException:
                kvm.close()
                raise
        except (PyvmmError, OSError) as exc:
            log.debug("no spare VM: %s", exc)
            return
        _spare.append((os.getpid(), path, ReadyVm(kvm, vm, vcpus)))


def discard() -> None:
    """Close this process's spare, if any (at exit; tests)."""
    with _lock:
        spares, _spare[:] = list(_spare), []
    for _, _, ready in spares:
        ready.close()  # in a forked child, its copies only


def has_spare() -> bool:
    """Whether this process holds a spare VM now."""
    with _lock:
        return bool(_spare) and _spare[0][0] == os.getpid()


atexit.register(discard)
