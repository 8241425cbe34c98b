"""vCPU and VM state as plain values, read from KVM and written back: what a snapshot keeps.

Each kernel struct is kept whole, as the bytes the ``KVM_GET_*`` ioctl filled
(its size checked against this host's header on the way back), so nothing of
a register file is lost to a hand-picked subset; MSRs are (index, value)
pairs and CPUID leaves tuples, since those are lists KVM defines by index.

The order follows the KVM API document and Firecracker's ``vstate``: on
saving, the MP state first (reading it makes KVM finish pending APIC events),
and before anything is read every vCPU has re-entered KVM once with
``immediate_exit`` set, so a port or MMIO access served by the VMM is
completed in the guest (``complete_pending``).  On restoring: CPUID, MP state,
regs, sregs, then FPU/XSAVE, XCRs and debug registers, then the LAPIC (after
sregs: APIC base), MSRs (after the LAPIC: TSC deadline), vCPU events (after
regs), and ``KVM_KVMCLOCK_CTRL`` last (so the guest's watchdog forgives the
pause).  Parts this host's KVM lacks are left out with their reason in
``missing``: a restore then keeps KVM's reset value for them.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from pyvmm.errors import KvmError
from pyvmm.kvm._ffi import ffi, ioctl, ioctl_value, lib
from pyvmm.kvm.system import CpuidTuple, Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

#: The TSC's MSR (Intel SDM vol. 4): a restore moves it on by the time since the snapshot.
MSR_IA32_TSC = 0x10

log = logging.getLogger(__name__)

#: Struct kept whole per vCPU part: part name -> (C type, get ioctl, set ioctl, capability).
_VCPU_STRUCTS: dict[str, tuple[str, str, str, str | None]] = {
    "regs": ("struct kvm_regs", "KVM_GET_REGS", "KVM_SET_REGS", None),
    "sregs": ("struct kvm_sregs", "KVM_GET_SREGS", "KVM_SET_SREGS", None),
    "xsave": ("struct kvm_xsave", "KVM_GET_XSAVE", "KVM_SET_XSAVE", "KVM_CAP_XSAVE"),
    "fpu": ("struct kvm_fpu", "KVM_GET_FPU", "KVM_SET_FPU", None),
    "xcrs": ("struct kvm_xcrs", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_CAP_XCRS"),
    "debugregs": ("struct kvm_debugregs", "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS",
                  "KVM_CAP_DEBUGREGS"),
    "lapic": ("struct kvm_lapic_state", "KVM_GET_LAPIC", "KVM_SET_LAPIC", None),
    "events": ("struct kvm_vcpu_events", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS",
               "KVM_CAP_VCPU_EVENTS"),
}
#: The order parts are written back in (module doc); ``fpu`` only when ``xsave`` is missing.
RESTORE_ORDER = ("regs", "sregs", "xsave", "fpu", "xcrs", "debugregs", "lapic", "msrs",
                 "events")
#: Parts a restore can't do without.
REQUIRED_PARTS = ("regs", "sregs", "lapic", "msrs")
#: The in-kernel irqchip's three chips, as KVM_GET_IRQCHIP numbers them.
IRQCHIPS = ("pic_master", "pic_slave", "ioapic")
#: A CPUID leaf's fields, in ``CpuidTuple`` order.
_CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
#: KVM_GET_MSRS entries asked for at once (KVM caps one call at 0x100... and more).
_MSR_BATCH = 128
_MSR_LIST_CAPACITY = 1024


@dataclass
class VcpuState:
    """One vCPU: the kernel structs by part, MSRs, CPUID, MP state and TSC rate."""

    mp_state: int
    structs: dict[str, bytes]
    msrs: list[tuple[int, int]]
    cpuid: list[CpuidTuple]
    tsc_khz: int | None = None
    #: Parts this host's KVM could not give, with why (a restore leaves them at reset).
    missing: dict[str, str] = field(default_factory=dict)
    #: The CPUID table and the MSRs as the kernel structs KVM_SET_CPUID2 and KVM_SET_MSRS
    #: take, built by the first restore: a snapshot kept in a process restores many clones.
    #: Treat as read-only (KVM only reads them); the MSRs are copied to move the TSC on.
    packed: tuple[Any, Any, int | None] | None = field(default=None, init=False, repr=False,
                                                       compare=False)

    def kernel_structs(self) -> tuple[Any, Any, int | None]:
        """(struct kvm_cpuid2 *, struct kvm_msrs *, the TSC's entry in it) of ``cpuid`` and
        ``msrs``, built once."""
        if self.packed is None:
            cpuid = ffi.new("struct kvm_cpuid2 *", {
                "nent": len(self.cpuid),
                "entries": [dict(zip(_CPUID_FIELDS, leaf)) for leaf in self.cpuid]})
            msrs = ffi.new("struct kvm_msrs *", {
                "nmsrs": len(self.msrs),
                "entries": [{"index": index, "data": value} for index, value in self.msrs]})
            tsc = next((slot for slot, (index, _) in enumerate(self.msrs)
                        if index == MSR_IA32_TSC), None)
            self.packed = (cpuid, msrs, tsc)
        return self.packed


@dataclass
class VmState:
    """The VM: the irqchip's three chips, the PIT and kvmclock, as kernel structs."""

    structs: dict[str, bytes]
    missing: dict[str, str] = field(default_factory=dict)


def _blob(ctype: str, data: bytes, what: str):  # -> cdata
    value = ffi.new(f"{ctype} *")
    if len(data) != ffi.sizeof(ctype):
        raise KvmError(f"{what}: {len(data)} bytes saved, this host's {ctype} has "
                       f"{ffi.sizeof(ctype)}", errno.EINVAL)
    ffi.memmove(value, data, len(data))
    return value


def _has(kvm: Kvm, capability: str | None) -> bool:
    return capability is None or kvm.check_extension(getattr(lib, capability)) > 0


# -- MSRs -----------------------------------------------------------------------------

def msr_index_list(kvm: Kvm) -> list[int]:
    """KVM_GET_MSR_INDEX_LIST: every MSR this KVM saves and restores for a guest."""
    request = ffi.new("struct kvm_msr_list *", {"nmsrs": _MSR_LIST_CAPACITY,
                                                "indices": _MSR_LIST_CAPACITY})
    ioctl(kvm.fd, lib.KVM_GET_MSR_INDEX_LIST, request, "KVM_GET_MSR_INDEX_LIST")
    return [int(request.indices[i]) for i in range(request.nmsrs)]


def read_msrs(vcpu: Vcpu, indices: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The values of ``indices`` KVM_GET_MSRS gives, and the indices it refused.

    KVM stops at the first MSR it can't read (one the guest's CPUID hides, a PMU
    counter without a PMU): that one is set aside and the rest read on.
    """
    wanted, values, refused = list(indices), [], []
    while wanted:
        batch = wanted[:_MSR_BATCH]
        request = ffi.new("struct kvm_msrs *", {"nmsrs": len(batch), "entries": len(batch)})
        for slot, index in zip(request.entries, batch):
            slot.index = index
        done = ioctl(vcpu.fd, lib.KVM_GET_MSRS, request, "KVM_GET_MSRS")
        values += [(int(request.entries[i].index), int(request.entries[i].data))
                   for i in range(done)]
        if done < len(batch):
            refused.append(batch[done])
            done += 1
        wanted = wanted[done:]
    return values, refused


# -- vCPUs ----------------------------------------------------------------------------

def complete_pending(vcpu: Vcpu) -> None:
    """Re-enter KVM with ``immediate_exit`` set: the exit the VMM served last is finished
    in the guest (an IN's value in RAX, RIP past the OUT) and no instruction runs."""
    vcpu.request_exit()
    try:
        vcpu.enter()
    finally:
        vcpu.clear_exit_request()


def save_vcpu(kvm: Kvm, vcpu: Vcpu, msr_indices: Iterable[int],
              cpuid: list[CpuidTuple]) -> VcpuState:
    """Read a paused vCPU's whole state (call ``complete_pending`` on it first).

    ``cpuid`` is the table the VMM set on it: kvm_pvm's KVM_GET_CPUID2 answers with
    leaves the guest was never shown, so what was set is what is kept.
    """
    mp = ffi.new("struct kvm_mp_state *")
    ioctl(vcpu.fd, lib.KVM_GET_MP_STATE, mp, "KVM_GET_MP_STATE")  # first: see the module doc
    structs, missing = {}, {}
    for part, (ctype, get, _set, capability) in _VCPU_STRUCTS.items():
        if part == "fpu" and "xsave" in structs:
            continue  # XSAVE holds the FPU and SSE state too
        if not _has(kvm, capability):
            missing[part] = f"this host's KVM lacks {capability}"
            continue
        value = ffi.new(f"{ctype} *")
        try:
            ioctl(vcpu.fd, getattr(lib, get), value, get)
        except KvmError as exc:
            if part in REQUIRED_PARTS:
                raise
            missing[part] = str(exc)
            continue
        structs[part] = bytes(ffi.buffer(value))
    msrs, refused = read_msrs(vcpu, msr_indices)
    if refused:
        log.debug("vCPU %d: MSRs not readable, left out: %s", vcpu.id,
                  " ".join(f"{index:#x}" for index in refused))
    tsc_khz = None
    if _has(kvm, "KVM_CAP_GET_TSC_KHZ"):
        tsc_khz = ioctl_value(vcpu.fd, lib.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")
    else:
        missing["tsc_khz"] = "this host's KVM lacks KVM_CAP_GET_TSC_KHZ"
    return VcpuState(int(mp.mp_state), structs, msrs, list(cpuid), tsc_khz, missing)


def restore_vcpu(kvm: Kvm, vcpu: Vcpu, state: VcpuState, advance_ns: int = 0) -> list[str]:
    """Write ``state`` into a new vCPU, in the order the module doc gives; return warnings.

    ``advance_ns``: the time since the snapshot, by which the guest's TSC moves on
    (a guest whose clocksource is the TSC then keeps the host's time).
    """
    warnings = [f"vCPU {vcpu.id}: {part} not saved ({why}); left at reset"
                for part, why in state.missing.items()]
    cpuid, saved_msrs, tsc_slot = state.kernel_structs()
    ioctl(vcpu.fd, lib.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")
    if state.tsc_khz is not None and _has(kvm, "KVM_CAP_GET_TSC_KHZ"):
        here = ioctl_value(vcpu.fd, lib.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")
        if abs(here - state.tsc_khz) > state.tsc_khz // 4000:  # 250 ppm, as QEMU allows
            if _has(kvm, "KVM_CAP_TSC_CONTROL"):
                ioctl_value(vcpu.fd, lib.KVM_SET_TSC_KHZ, state.tsc_khz, "KVM_SET_TSC_KHZ")
            else:
                warnings.append(f"vCPU {vcpu.id}: the guest's TSC ran at {state.tsc_khz} kHz, "
                                f"this host's at {here} kHz and KVM can't scale it")
    mp = ffi.new("struct kvm_mp_state *", {"mp_state": state.mp_state})
    ioctl(vcpu.fd, lib.KVM_SET_MP_STATE, mp, "KVM_SET_MP_STATE")
    for part in RESTORE_ORDER:
        if part == "msrs":
            _set_msrs(vcpu, saved_msrs, tsc_slot,
                      advance_ns * (state.tsc_khz or 0) // 1_000_000)
            continue
        data = state.structs.get(part)
        if data is None:
            if part in REQUIRED_PARTS:
                raise KvmError(f"the snapshot has no {part} for vCPU {vcpu.id}", errno.EINVAL)
            continue
        ctype, _get, set_name, capability = _VCPU_STRUCTS[part]
        if not _has(kvm, capability):
            warnings.append(f"vCPU {vcpu.id}: this host's KVM lacks {capability}: "
                            f"{part} left at reset")
            continue
        ioctl(vcpu.fd, getattr(lib, set_name), _blob(ctype, data, part), set_name)
    return warnings


def _set_msrs(vcpu: Vcpu, saved: Any, tsc_slot: int | None, tsc_ticks: int) -> None:
    """KVM_SET_MSRS of a copy of ``saved`` (a struct kvm_msrs) with the TSC (its entry
    ``tsc_slot``) moved on by ``tsc_ticks``; every MSR must be accepted."""
    count = saved.nmsrs
    size = ffi.sizeof("struct kvm_msrs") + count * ffi.sizeof("struct kvm_msr_entry")
    request = ffi.new("struct kvm_msrs *", {"nmsrs": count, "entries": count})
    ffi.memmove(request, saved, size)
    if tsc_slot is not None:
        entry = request.entries[tsc_slot]
        entry.data = (entry.data + tsc_ticks) & (1 << 64) - 1
    done = ioctl(vcpu.fd, lib.KVM_SET_MSRS, request, "KVM_SET_MSRS")
    if done != count:
        raise KvmError(f"KVM_SET_MSRS (MSR {request.entries[done].index:#x} refused)",
                       errno.EINVAL)


def kvmclock_ctrl(vcpu: Vcpu) -> None:
    """KVM_KVMCLOCK_CTRL: tell a guest using kvmclock it was paused (its soft-lockup
    watchdog then doesn't fire).  EINVAL for a guest without kvmclock is expected."""
    ret = lib.pyvmm_ioctl_value(vcpu.fd, lib.KVM_KVMCLOCK_CTRL, 0)
    if ret < 0 and ret != -errno.EINVAL:
        log.debug("vCPU %d: KVM_KVMCLOCK_CTRL: %s", vcpu.id, errno.errorcode.get(-ret, ret))


# -- the VM ---------------------------------------------------------------------------

def save_vm(kvm: Kvm, vm: Vm) -> VmState:
    """The in-kernel PIC pair and IOAPIC, the PIT and kvmclock."""
    structs, missing = {}, {}
    for number, name in enumerate(IRQCHIPS):
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": number})
        ioctl(vm.fd, lib.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        structs[name] = bytes(ffi.buffer(chip))
    if _has(kvm, "KVM_CAP_PIT_STATE2"):
        pit = ffi.new("struct kvm_pit_state2 *")
        ioctl(vm.fd, lib.KVM_GET_PIT2, pit, "KVM_GET_PIT2")
        structs["pit2"] = bytes(ffi.buffer(pit))
    else:
        missing["pit2"] = "this host's KVM lacks KVM_CAP_PIT_STATE2"
    if _has(kvm, "KVM_CAP_ADJUST_CLOCK"):
        clock = ffi.new("struct kvm_clock_data *")
        ioctl(vm.fd, lib.KVM_GET_CLOCK, clock, "KVM_GET_CLOCK")
        structs["clock"] = bytes(ffi.buffer(clock))
    else:
        missing["clock"] = "this host's KVM lacks KVM_CAP_ADJUST_CLOCK"
    return VmState(structs, missing)


def restore_vm(kvm: Kvm, vm: Vm, state: VmState, advance_ns: int = 0) -> list[str]:
    """PIT, kvmclock, then the three irqchips (Firecracker's order); return warnings.

    kvmclock moves on by ``advance_ns`` (the time since the snapshot), so the
    guest's clocks read the host's time, not the snapshot's.
    """
    warnings = [f"VM: {part} not saved ({why}); left at reset"
                for part, why in state.missing.items()]
    if "pit2" in state.structs:
        ioctl(vm.fd, lib.KVM_SET_PIT2, _blob("struct kvm_pit_state2", state.structs["pit2"],
                                             "pit2"), "KVM_SET_PIT2")
    if "clock" in state.structs:
        if _has(kvm, "KVM_CAP_ADJUST_CLOCK"):
            clock = _blob("struct kvm_clock_data", state.structs["clock"], "clock")
            clock.flags = 0  # the flags KVM_GET_CLOCK reports are not ones SET takes
            clock.clock += advance_ns
            ioctl(vm.fd, lib.KVM_SET_CLOCK, clock, "KVM_SET_CLOCK")
        else:
            warnings.append("VM: this host's KVM lacks KVM_CAP_ADJUST_CLOCK: kvmclock restarts")
    for name in IRQCHIPS:
        ioctl(vm.fd, lib.KVM_SET_IRQCHIP, _blob("struct kvm_irqchip", state.structs[name],
                                                name), "KVM_SET_IRQCHIP")
    return warnings
