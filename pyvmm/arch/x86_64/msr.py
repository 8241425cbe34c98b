"""Model-specific registers set on every vCPU before the kernel starts."""

from __future__ import annotations

MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_IA32_TSC = 0x10
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF

#: IA32_MISC_ENABLE bit 0: fast string operations enabled (as firmware leaves it).
MISC_ENABLE_FAST_STRING = 0x1
#: MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
MTRR_ENABLE = 0x800
MTRR_TYPE_WRITE_BACK = 0x6


def boot_msrs() -> list[tuple[int, int]]:
    """(index, value) pairs: syscall MSRs cleared, fast strings, write-back MTRR default."""
    return [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
