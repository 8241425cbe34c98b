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


#: MSRs a snapshot keeps, as (first, count) ranges, of those KVM_GET_MSR_INDEX_LIST
#: names: architectural and KVM paravirtual state a guest sets or reads back
#: (Firecracker's list).  Left out: IA32_MCG_CTL (KVM reads it only with MCE set
#: up), the PMU's counters, VMX/SVM capability MSRs and Hyper-V's, which depend
#: on a configuration pyvmm never gives.
SAVED_MSR_RANGES: tuple[tuple[int, int], ...] = (
    (0x0, 2),            # P5 machine-check address and type
    (0x10, 1),           # TSC
    (0x17, 1), (0x1B, 1),  # platform ID, APIC base
    (0x2A, 1), (0x2C, 1), (0x34, 1),  # power-on configuration, FSB frequency, SMI count
    (0x3A, 2),           # feature control, TSC adjust
    (0x48, 2),           # speculation control, prediction command
    (0x79, 1), (0x8B, 1), (0x9E, 1),  # microcode update and revision, SMBASE
    (0xCD, 2), (0xE2, 1), (0xE7, 2), (0xFE, 1), (0x11E, 1),
    (0x122, 1),          # TSX control
    (0x140, 1),          # misc features enables (CPUID faulting)
    (0x174, 3),          # SYSENTER CS/ESP/EIP
    (0x179, 2),          # MCG capabilities and status
    (0x198, 1), (0x1A0, 1), (0x1A4, 1), (0x1AA, 1), (0x1AD, 2),
    (0x1D9, 1), (0x1DB, 4),  # debug control, last-branch records
    (0x1FC, 1),
    (0x200, 0x100),      # MTRRs, PAT, MTRR default type
    (0x3FC, 3), (0x400, 0x80),  # C-state residency, machine-check banks
    (0x606, 1), (0x60A, 3), (0x610, 2), (0x613, 2), (0x618, 2), (0x61B, 2),  # RAPL
    (0x648, 5),          # configurable TDP, turbo activation ratio
    (0x6E0, 1),          # TSC deadline (restored after the LAPIC)
    (0x800, 0x400),      # x2APIC
    (0x4B564D00, 7),     # kvmclock (new), async PF, steal time, PV EOI, poll control, PF int
    (0xC0000080, 5),     # EFER, STAR, LSTAR, CSTAR, SYSCALL mask
    (0xC0000100, 4),     # FS base, GS base, kernel GS base, TSC_AUX
    (0xC0010015, 1),     # AMD hardware configuration
)


def msr_is_saved(index: int) -> bool:
    """Whether a snapshot keeps MSR ``index`` (``SAVED_MSR_RANGES``)."""
    return any(first <= index < first + count for first, count in SAVED_MSR_RANGES)
