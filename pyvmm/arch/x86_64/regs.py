"""Boot CPU register state as plain data; the machine turns it into ioctls."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.gdt import (BOOT_CS32_SELECTOR, BOOT_CS_SELECTOR, BOOT_DS_SELECTOR, BOOT_TSS_SELECTOR,
                                   SegmentRegister, boot_gdt_entries, segment_from_gdt_entry)
from pyvmm.memory import GuestMemory

X86_CR0_PE = 0x1
X86_CR0_ET = 0x10
X86_CR0_PG = 0x8000_0000
X86_CR4_PAE = 0x20
EFER_LME = 0x100
EFER_LMA = 0x400
#: RFLAGS bit 1 is reserved and always set.
RFLAGS_RESERVED = 0x2
#: The LDT a freshly reset x86 CPU has (KVM's reset value): present, type LDT.
RESET_LDT = SegmentRegister(limit=0xFFFF, type=2, present=1)


@dataclass(frozen=True)
class SpecialRegisters:
    """Segment, descriptor-table and control registers (struct kvm_sregs)."""

    cs: SegmentRegister
    ds: SegmentRegister
    es: SegmentRegister
    fs: SegmentRegister
    gs: SegmentRegister
    ss: SegmentRegister
    tr: SegmentRegister
    ldt: SegmentRegister
    gdt_base: int
    gdt_limit: int
    idt_base: int
    idt_limit: int
    cr0: int
    cr3: int
    cr4: int
    efer: int


@dataclass(frozen=True)
class GeneralRegisters:
    """The general registers the 64-bit entry needs (others start at zero)."""

    rip: int
    rsp: int
    rbp: int
    rsi: int
    rflags: int = RFLAGS_RESERVED
    rbx: int = 0


@dataclass(frozen=True)
class FpuState:
    """x87 control word and MXCSR at their architectural reset values."""

    fcw: int = 0x37F
    mxcsr: int = 0x1F80


def write_boot_gdt(memory: GuestMemory) -> None:
    """Write the boot GDT and an empty IDT into low memory."""
    entries = boot_gdt_entries()
    memory.write(layout.BOOT_GDT_START, struct.pack(f"<{len(entries)}Q", *entries))
    memory.write_u64(layout.BOOT_IDT_START, 0)


def _flat_sregs(code_selector: int, cr0: int, cr3: int, cr4: int,
                efer: int) -> SpecialRegisters:
    """Flat segments from the boot GDT (code from ``code_selector``) and control registers."""
    entries = boot_gdt_entries()

    def segment(selector: int):
        return segment_from_gdt_entry(entries[selector // 8], selector // 8)

    data = segment(BOOT_DS_SELECTOR)
    return SpecialRegisters(
        cs=segment(code_selector), ds=data, es=data, fs=data, gs=data, ss=data,
        tr=segment(BOOT_TSS_SELECTOR), ldt=RESET_LDT,
        gdt_base=layout.BOOT_GDT_START, gdt_limit=len(entries) * 8 - 1,
        idt_base=layout.BOOT_IDT_START, idt_limit=7,
        cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)


def boot_sregs_64(cr3: int) -> SpecialRegisters:
    """Long mode with paging on, flat segments from the boot GDT."""
    return _flat_sregs(BOOT_CS_SELECTOR, X86_CR0_PE | X86_CR0_ET | X86_CR0_PG, cr3,
                       X86_CR4_PAE, EFER_LME | EFER_LMA)


def boot_regs_64(entry: int, zero_page: int) -> GeneralRegisters:
    """RIP at the 64-bit entry, RSI at the zero page, a stack in low memory."""
    return GeneralRegisters(rip=entry, rsp=layout.BOOT_STACK_POINTER,
                            rbp=layout.BOOT_STACK_POINTER, rsi=zero_page)


def boot_sregs_32() -> SpecialRegisters:
    """The PVH entry state: 32-bit protected mode, flat segments, paging off."""
    return _flat_sregs(BOOT_CS32_SELECTOR, X86_CR0_PE | X86_CR0_ET, 0, 0, 0)


def boot_regs_pvh(entry: int, start_info: int) -> GeneralRegisters:
    """EIP at the PVH entry, EBX at hvm_start_info."""
    return GeneralRegisters(rip=entry, rsp=layout.BOOT_STACK_POINTER,
                            rbp=layout.BOOT_STACK_POINTER, rsi=0, rbx=start_info)
