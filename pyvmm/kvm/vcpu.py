"""The KVM vCPU fd: register state and KVM_RUN, whose exits come out as data."""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any, Iterable, Mapping, Sequence

from pyvmm.errors import KvmError
from pyvmm.kvm._ffi import ffi, ioctl, lib
from pyvmm.kvm.exits import (Debug, FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut,
                             MmioRead, MmioWrite, Shutdown, SystemEvent, UnknownExit,
                             VmExit)

#: Local APIC register offsets of the LVT LINT0 / LINT1 entries, and delivery
#: modes (Intel SDM vol. 3, 11.5.1): LINT0 takes the PIC's ExtINT, LINT1 NMI,
#: as a PC's BIOS programs them (Linux's virtual-wire mode relies on it).
_APIC_LVT_LINT0 = 0x350
_APIC_LVT_LINT1 = 0x360
_APIC_DELIVERY_MODE_SHIFT = 8
_APIC_DELIVERY_MODE_MASK = 0x7 << _APIC_DELIVERY_MODE_SHIFT
_APIC_MODE_EXTINT = 0x7
_APIC_MODE_NMI = 0x4

_SEGMENT_FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db",
                   "s", "l", "g", "avl", "unusable")
_SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_SREG_SCALARS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
REGISTER_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                  "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


class Vcpu:
    """One virtual CPU: its fd and its mmap'ed kvm_run area."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        self.fd = fd
        self.id = vcpu_id
        self._run_map = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._run_view = memoryview(self._run_map)
        base = ffi.cast("char *", ffi.from_buffer(self._run_map))
        self._run = ffi.cast("struct kvm_run *", base)
        #: Host address of the kvm_run mapping (for C code that runs this vCPU itself):
        #: valid until ``close``.
        self.run_address = int(ffi.cast("uintptr_t", base))
        exit_area = base + lib.PYVMM_KVM_RUN_EXIT_OFFSET
        self._io = ffi.cast("pyvmm_exit_io *", exit_area)
        self._mmio = ffi.cast("pyvmm_exit_mmio *", exit_area)
        self._mmio_data_offset = (lib.PYVMM_KVM_RUN_EXIT_OFFSET
                                  + ffi.offsetof("pyvmm_exit_mmio", "data"))
        self._internal = ffi.cast("pyvmm_exit_internal *", exit_area)
        self._emulation = ffi.cast("pyvmm_exit_emulation_failure *", exit_area)
        self._system_event = ffi.cast("pyvmm_exit_system_event *", exit_area)
        self._fail_entry = ffi.cast("pyvmm_exit_fail_entry *", exit_area)
        self._hw = ffi.cast("pyvmm_exit_hw *", exit_area)
        self._debug = ffi.cast("pyvmm_exit_debug *", exit_area)

    # -- running -------------------------------------------------------------

    def run(self) -> VmExit:
        """KVM_RUN until the next exit to userspace (the GIL is released meanwhile)."""
        return self.enter() or self.decode_exit()

    def enter(self) -> Interrupted | None:
        """KVM_RUN alone: ``Interrupted`` if kicked, else None (then ``decode_exit``)."""
        return self._entered(lib.pyvmm_ioctl(self.fd, lib.KVM_RUN, ffi.NULL))

    def finish_run(self, ret: int) -> VmExit:
        """What ``run`` returns, for a KVM_RUN issued on this vCPU's fd outside this
        class (a C loop given ``fd`` and ``run_address``): ``ret`` is its 0 or -errno."""
        return self._entered(ret) or self.decode_exit()

    def _entered(self, ret: int) -> Interrupted | None:
        if ret < 0:
            if ret in (-errno.EINTR, -errno.EAGAIN):
                self._run.immediate_exit = 0
                return Interrupted()
            raise KvmError("KVM_RUN", -ret)
        return None

    def coalesced_ring_address(self) -> int:
        """Host address of the VM's coalesced-I/O ring (a page of every vCPU's kvm_run
        mapping), a ``struct kvm_coalesced_mmio_ring``: valid until ``close``."""
        offset = lib.KVM_COALESCED_MMIO_PAGE_OFFSET * mmap.PAGESIZE
        if len(self._run_map) < offset + mmap.PAGESIZE:
            raise KvmError("coalesced I/O ring not mapped", errno.ENODEV)
        return self.run_address + offset

    def request_exit(self) -> None:
        """Make the next (or current, once kicked by a signal) KVM_RUN return at once."""
        self._run.immediate_exit = 1

    def clear_exit_request(self) -> None:
        """Undo ``request_exit`` (a KVM_RUN that returned early clears it itself)."""
        self._run.immediate_exit = 0

    def decode_exit(self) -> VmExit:
        """The exit the last KVM_RUN left in the kvm_run area, as data."""
        reason = self._run.exit_reason
        if reason == lib.KVM_EXIT_IO:
            io = self._io
            start = io.data_offset
            data = self._run_view[start:start + io.size * io.count]
            if io.direction == lib.KVM_EXIT_IO_OUT:
                return IoOut(io.port, io.size, data)
            return IoIn(io.port, io.size, data)
        if reason == lib.KVM_EXIT_MMIO:
            mmio = self._mmio
            start = self._mmio_data_offset
            data = self._run_view[start:start + mmio.len]
            if mmio.is_write:
                return MmioWrite(mmio.phys_addr, data)
            return MmioRead(mmio.phys_addr, data)
        if reason == lib.KVM_EXIT_HLT:
            return Hlt()
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return Shutdown()
        if reason == lib.KVM_EXIT_INTR:
            return Interrupted()
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            event = self._system_event
            return SystemEvent(event.type, event.data[0] if event.ndata else 0)
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            return self._decode_internal_error()
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            return FailEntry(self._fail_entry.hardware_entry_failure_reason,
                             self._fail_entry.cpu)
        if reason == lib.KVM_EXIT_DEBUG:
            debug = self._debug
            return Debug(debug.exception, debug.pc, debug.dr6, debug.dr7)
        return UnknownExit(reason, self._hw.hardware_exit_reason)

    def _decode_internal_error(self) -> InternalError:
        internal = self._internal
        ndata = min(internal.ndata, 16)
        data = tuple(internal.data[i] for i in range(ndata))
        instruction = None
        emulation = self._emulation
        if (internal.suberror == lib.KVM_INTERNAL_ERROR_EMULATION and ndata >= 1
                and emulation.flags
                & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES):
            size = min(emulation.insn_size, 15)
            instruction = bytes(emulation.insn_bytes[0:size])
        return InternalError(internal.suberror, data, instruction)

    # -- registers ----------------------------------------------------------

    def get_regs(self) -> dict[str, int]:
        """KVM_GET_REGS as a dict of the general-purpose registers."""
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, lib.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return {name: getattr(regs, name) for name in REGISTER_NAMES}

    def set_regs(self, values: Mapping[str, int]) -> None:
        """KVM_SET_REGS: registers not named in ``values`` are zero."""
        regs = ffi.new("struct kvm_regs *")
        for name, value in values.items():
            setattr(regs, name, value)
        ioctl(self.fd, lib.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> dict[str, Any]:
        """KVM_GET_SREGS as a dict: segments are dicts, gdt/idt are (base, limit)."""
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        result: dict[str, Any] = {
            name: {f: getattr(getattr(sregs, name), f) for f in _SEGMENT_FIELDS}
            for name in _SEGMENT_NAMES}
        for name in _SREG_SCALARS:
            result[name] = getattr(sregs, name)
        result["gdt"] = (sregs.gdt.base, sregs.gdt.limit)
        result["idt"] = (sregs.idt.base, sregs.idt.limit)
        return result

    def set_sregs(self, state: Any) -> None:
        """KVM_SET_SREGS from an object with segment / table / control attributes.

        ``state`` has ``cs`` … ``ldt`` (each with the kvm_segment field names),
        ``gdt_base``/``gdt_limit``/``idt_base``/``idt_limit`` and ``cr0``,
        ``cr3``, ``cr4``, ``efer``.  Everything else keeps KVM's reset value.
        """
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        for name in _SEGMENT_NAMES:
            segment = getattr(state, name)
            target = getattr(sregs, name)
            for field in _SEGMENT_FIELDS:
                setattr(target, field, int(getattr(segment, field)))
        sregs.gdt.base, sregs.gdt.limit = state.gdt_base, state.gdt_limit
        sregs.idt.base, sregs.idt.limit = state.idt_base, state.idt_limit
        for name in ("cr0", "cr3", "cr4", "efer"):
            setattr(sregs, name, getattr(state, name))
        ioctl(self.fd, lib.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> dict[str, Any]:
        """KVM_GET_FPU: x87 registers (``st``: 8 ints of 80 bits), control/status,
        the abridged tag (``ftwx``), last instruction/operand, ``xmm`` (16 ints), MXCSR."""
        fpu = ffi.new("struct kvm_fpu *")
        ioctl(self.fd, lib.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return {"st": [int.from_bytes(ffi.buffer(fpu.fpr[i])[:10], "little") for i in range(8)],
                "xmm": [int.from_bytes(ffi.buffer(fpu.xmm[i])[:], "little") for i in range(16)],
                "fcw": fpu.fcw, "fsw": fpu.fsw, "ftwx": fpu.ftwx, "fop": fpu.last_opcode,
                "last_ip": fpu.last_ip, "last_dp": fpu.last_dp, "mxcsr": fpu.mxcsr}

    def get_msr(self, index: int) -> int:
        """KVM_GET_MSRS for one MSR."""
        request = ffi.new("struct kvm_msrs *", {"nmsrs": 1, "entries": 1})
        request.entries[0].index = index
        if ioctl(self.fd, lib.KVM_GET_MSRS, request, "KVM_GET_MSRS") != 1:
            raise KvmError(f"KVM_GET_MSRS (MSR {index:#x} refused)", errno.EINVAL)
        return int(request.entries[0].data)

    def set_guest_debug(self, control: int, debugreg: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: ``control`` is KVM_GUESTDBG_* flags; ``debugreg`` DR0-DR7."""
        debug = ffi.new("struct kvm_guest_debug *")
        debug.control = control
        for index, value in enumerate(debugreg):
            debug.arch.debugreg[index] = value
        ioctl(self.fd, lib.KVM_SET_GUEST_DEBUG, debug, "KVM_SET_GUEST_DEBUG")

    def set_fpu(self, fcw: int, mxcsr: int) -> None:
        """KVM_SET_FPU with the x87 control word and MXCSR Linux expects at entry."""
        fpu = ffi.new("struct kvm_fpu *")
        fpu.fcw = fcw
        fpu.mxcsr = mxcsr
        ioctl(self.fd, lib.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def set_msrs(self, msrs: Iterable[tuple[int, int]]) -> None:
        """KVM_SET_MSRS; every MSR must be accepted."""
        entries = list(msrs)
        request = ffi.new("struct kvm_msrs *", {"nmsrs": len(entries),
                                                "entries": len(entries)})
        for slot, (index, value) in zip(request.entries, entries):
            slot.index = index
            slot.data = value
        done = ioctl(self.fd, lib.KVM_SET_MSRS, request, "KVM_SET_MSRS")
        if done != len(entries):
            raise KvmError(f"KVM_SET_MSRS (MSR {entries[done][0]:#x} refused)", errno.EINVAL)

    def set_cpuid(self, entries: Iterable[Any]) -> None:
        """KVM_SET_CPUID2 from objects with function/index/flags/eax/ebx/ecx/edx."""
        leaves = list(entries)
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(leaves), "entries": len(leaves)})
        for slot, leaf in zip(cpuid.entries, leaves):
            for field in ("function", "index", "flags", "eax", "ebx", "ecx", "edx"):
                setattr(slot, field, getattr(leaf, field))
        ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2")

    def inject_exception(self, vector: int) -> None:
        """KVM_SET_VCPU_EVENTS: deliver exception ``vector`` (no error code) on the next entry."""
        events = ffi.new("struct kvm_vcpu_events *")
        ioctl(self.fd, lib.KVM_GET_VCPU_EVENTS, events, "KVM_GET_VCPU_EVENTS")
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = 0
        events.exception.pending = 0
        ioctl(self.fd, lib.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def configure_lapic_lint(self) -> None:
        """Program LINT0 as ExtINT and LINT1 as NMI, as a PC's firmware does."""
        lapic = ffi.new("struct kvm_lapic_state *")
        ioctl(self.fd, lib.KVM_GET_LAPIC, lapic, "KVM_GET_LAPIC")
        regs = ffi.buffer(lapic.regs)
        for offset, mode in ((_APIC_LVT_LINT0, _APIC_MODE_EXTINT),
                             (_APIC_LVT_LINT1, _APIC_MODE_NMI)):
            value = int.from_bytes(regs[offset:offset + 4], "little")
            value = (value & ~_APIC_DELIVERY_MODE_MASK) | (mode << _APIC_DELIVERY_MODE_SHIFT)
            regs[offset:offset + 4] = value.to_bytes(4, "little")
        ioctl(self.fd, lib.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def close(self) -> None:
        self._run_view.release()
        self._run_map.close()
        os.close(self.fd)
