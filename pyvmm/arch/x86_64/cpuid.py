"""CPUID for each vCPU: the host's identity leaves, topology and APIC IDs, the feature policy.

KVM_GET_SUPPORTED_CPUID says what KVM can present; the brand string and the
cache and TLB descriptors come from the host's own CPUID instead (KVM leaves
the brand string and, before Linux 6.6, leaf 0x80000005 empty), as under
QEMU's ``-cpu host``; we set per-vCPU identity (APIC IDs, counts) and, under the "compat" policy, hide the features a
software x86 emulator cannot execute.  kvm_pvm emulates non-PVM guests
instruction by instruction and fails on ``cmpxchg16b`` and ``xsave``/``xrstor``;
hiding CX16 and XSAVE (and everything built on XSAVE) makes Linux use the
older instructions it can run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from pyvmm.limits import MAX_CPUS

#: The feature policies --cpu accepts (besides "auto", resolved by the machine).
CPU_POLICIES = ("host", "compat")

LEAF_BASIC_MAX = 0x0
LEAF_FEATURES = 0x1
LEAF_CACHE_DESCRIPTORS = 0x2
LEAF_CACHE_PARAMS = 0x4
LEAF_EXTENDED_FEATURES = 0x7
LEAF_TOPOLOGY = 0xB
LEAF_XSAVE = 0xD
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_EXT_MAX = 0x80000000
LEAF_EXT_FEATURES = 0x80000001
LEAF_BRAND = (0x80000002, 0x80000003, 0x80000004)
LEAF_L1_CACHE_TLB = 0x80000005
LEAF_L2_L3_CACHE_TLB = 0x80000006
LEAF_AMD_CACHE_PARAMS = 0x8000001D

#: The leaves taken from the host's CPUID as they are (leaf 4's sharing fields
#: are then fitted to the vCPUs like KVM's): what a guest or a tool prints or
#: sizes its caches by, and costs nothing to show.
HOST_LEAVES = (LEAF_CACHE_DESCRIPTORS, LEAF_CACHE_PARAMS, *LEAF_BRAND, LEAF_L1_CACHE_TLB,
               LEAF_L2_L3_CACHE_TLB, LEAF_AMD_CACHE_PARAMS)
#: Leaves with one subleaf per cache, up to one whose type (EAX[4:0]) is 0.
CACHE_SUBLEAF_LEAVES = (LEAF_CACHE_PARAMS, LEAF_AMD_CACHE_PARAMS)
#: More subleaves than any CPU has caches: a bound on a reader that never ends them.
MAX_CACHE_SUBLEAVES = 16
#: struct kvm_cpuid_entry2's flag for leaves whose subleaf (ECX) matters.
KVM_CPUID_FLAG_SIGNIFICANT_INDEX = 1

#: CPUID leaf 4 EAX[31:26] holds "cores per package - 1" in 6 bits, and
#: EAX[25:14] "logical processors sharing this cache - 1".
LEAF4_MAX_CORES = 64
LEAF4_SHARING_SHIFT, LEAF4_SHARING_MASK = 14, 0xFFF

# Leaf 1 bits.
EBX_APIC_ID_SHIFT = 24
EBX_LOGICAL_COUNT_SHIFT = 16
EDX_HTT = 1 << 28
ECX_HYPERVISOR = 1 << 31
#: The LAPIC timer's TSC-deadline mode: KVM_GET_SUPPORTED_CPUID leaves it out because
#: userspace must check KVM_CAP_TSC_DEADLINE_TIMER (QEMU and Firecracker set it then).
ECX_TSC_DEADLINE = 1 << 24

# Leaf 0xB/0x1F ECX[15:8] level types.
LEVEL_TYPE_SMT = 1
LEVEL_TYPE_CORE = 2

#: (leaf, subleaf, register, bits) hidden by the "compat" policy, and why.
COMPAT_HIDDEN: tuple[tuple[int, int, str, tuple[int, ...], str], ...] = (
    (LEAF_FEATURES, 0, "ecx", (13,), "CX16 (cmpxchg16b)"),
    (LEAF_FEATURES, 0, "ecx", (26, 27), "XSAVE/OSXSAVE"),
    (LEAF_FEATURES, 0, "ecx", (12, 28, 29), "FMA/AVX/F16C (need XSAVE)"),
    (LEAF_FEATURES, 0, "ecx", (17,), "PCID"),
    (LEAF_FEATURES, 0, "ecx", (23,), "POPCNT"),
    (LEAF_EXTENDED_FEATURES, 0, "ebx", (5, 16, 17, 21, 26, 27, 28, 30, 31),
     "AVX2/AVX-512"),
    (LEAF_EXTENDED_FEATURES, 0, "ebx", (10,), "INVPCID"),
    (LEAF_EXTENDED_FEATURES, 0, "ecx", (1, 6, 11, 12, 14), "AVX-512 extensions"),
    (LEAF_EXTENDED_FEATURES, 0, "edx", (2, 3, 8, 23), "AVX-512 extensions"),
    (LEAF_EXT_FEATURES, 0, "ecx", (11, 16), "XOP/FMA4"),
)


@dataclass(frozen=True)
class CpuidEntry:
    """One CPUID leaf/subleaf as struct kvm_cpuid_entry2 has it."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def _clear_bits(value: int, bits: Sequence[int]) -> int:
    for bit in bits:
        value &= ~(1 << bit)
    return value


def host_leaves(read: Callable[[int, int], tuple[int, int, int, int]]) -> list[CpuidEntry]:
    """The host's HOST_LEAVES (those its CPU has), read with ``read(leaf, subleaf)``."""
    limits = {0: read(LEAF_BASIC_MAX, 0)[0], LEAF_EXT_MAX: read(LEAF_EXT_MAX, 0)[0]}
    entries = []
    for leaf in HOST_LEAVES:
        if leaf > limits[leaf & LEAF_EXT_MAX]:
            continue
        if leaf not in CACHE_SUBLEAF_LEAVES:
            entries.append(CpuidEntry(leaf, 0, 0, *read(leaf, 0)))
            continue
        for index in range(MAX_CACHE_SUBLEAVES):
            regs = read(leaf, index)
            entries.append(CpuidEntry(leaf, index, KVM_CPUID_FLAG_SIGNIFICANT_INDEX, *regs))
            if regs[0] & 0x1F == 0:  # the null entry that ends the list is kept, as KVM does
                break
    return entries


def with_host_leaves(supported: Sequence[CpuidEntry], host: Sequence[CpuidEntry]) -> \
        list[CpuidEntry]:
    """KVM's table with each leaf of ``host`` in place of KVM's own.

    Only leaves within the table's own range (CPUID 0 and 0x80000000 EAX) are
    taken: the guest asks for no other, and the range stays KVM's.
    """
    limits = {0: 0, LEAF_EXT_MAX: 0}
    for entry in supported:
        if entry.function in (LEAF_BASIC_MAX, LEAF_EXT_MAX):
            limits[entry.function] = entry.eax
    taken: dict[int, list[CpuidEntry]] = {}
    for entry in host:
        if entry.function <= limits[entry.function & LEAF_EXT_MAX]:
            taken.setdefault(entry.function, []).append(entry)
    result, placed = [], set()
    for entry in supported:  # in KVM's order, each taken leaf where KVM had it
        if entry.function not in taken:
            result.append(entry)
        elif entry.function not in placed:
            placed.add(entry.function)
            result.extend(taken[entry.function])
    return result + [entry for function, entries in taken.items() if function not in placed
                     for entry in entries]


def _topology_leaf(entry: CpuidEntry, apic_id: int, cpu_count: int) -> CpuidEntry:
    """Leaf 0xB/0x1F: one thread per core, ``cpu_count`` cores in one package."""
    core_shift = max(cpu_count - 1, 0).bit_length()
    if entry.index == 0:
        eax, ebx, ecx = 0, 1, (LEVEL_TYPE_SMT << 8)
    elif entry.index == 1:
        eax, ebx, ecx = core_shift, cpu_count, (LEVEL_TYPE_CORE << 8) | 1
    else:
        eax, ebx, ecx = 0, 0, entry.index
    return dataclasses.replace(entry, eax=eax, ebx=ebx, ecx=ecx, edx=apic_id)


def _cache_params_eax(eax: int, cpu_count: int) -> int:
    """Leaf 4's EAX for ``cpu_count`` cores in one package (as QEMU fits the host's).

    EAX[31:26] is the package's cores - 1; EAX[25:14], the logical processors
    sharing this cache - 1, becomes the whole package where the host's cache
    is shared by more than the guest has.
    """
    if not eax & 0x1F:
        return eax  # no cache: the list's end
    eax = (eax & 0x03FFFFFF) | ((min(cpu_count, LEAF4_MAX_CORES) - 1) << 26)
    sharing = (eax >> LEAF4_SHARING_SHIFT) & LEAF4_SHARING_MASK
    if sharing + 1 > cpu_count:
        package_ids = 1 << max(cpu_count - 1, 0).bit_length()
        eax = (eax & ~(LEAF4_SHARING_MASK << LEAF4_SHARING_SHIFT)) \
            | ((package_ids - 1) << LEAF4_SHARING_SHIFT)
    return eax


def adjust_cpuid(entries: Sequence[CpuidEntry], vcpu_id: int, cpu_count: int,
                 policy: str, tsc_deadline: bool = False) -> list[CpuidEntry]:
    """The CPUID table for vCPU ``vcpu_id`` (its APIC ID) under ``policy``.

    ``tsc_deadline``: KVM emulates the LAPIC timer's TSC-deadline mode, so offer it:
    the guest then arms its timer with one WRMSR instead of an emulated MMIO write.
    """
    if policy not in CPU_POLICIES:
        raise ValueError(f"unknown CPU policy {policy!r}")
    if not 0 <= vcpu_id < cpu_count <= MAX_CPUS:
        raise ValueError(f"vCPU {vcpu_id} of {cpu_count}: at most {MAX_CPUS} vCPUs")
    result = []
    for entry in entries:
        if entry.function == LEAF_FEATURES:
            ebx = ((entry.ebx & 0xFFFF) | (vcpu_id << EBX_APIC_ID_SHIFT)
                   | (cpu_count << EBX_LOGICAL_COUNT_SHIFT))
            edx = entry.edx | EDX_HTT if cpu_count > 1 else entry.edx & ~EDX_HTT
            ecx = entry.ecx | ECX_HYPERVISOR | (ECX_TSC_DEADLINE if tsc_deadline else 0)
            entry = dataclasses.replace(entry, ebx=ebx, ecx=ecx, edx=edx)
        elif entry.function == LEAF_CACHE_PARAMS:
            entry = dataclasses.replace(entry, eax=_cache_params_eax(entry.eax, cpu_count))
        elif entry.function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            entry = _topology_leaf(entry, vcpu_id, cpu_count)
        if policy == "compat":
            if entry.function == LEAF_XSAVE:
                entry = dataclasses.replace(entry, eax=0, ebx=0, ecx=0, edx=0)
            for leaf, subleaf, register, bits, _why in COMPAT_HIDDEN:
                if entry.function == leaf and entry.index == subleaf:
                    entry = dataclasses.replace(
                        entry, **{register: _clear_bits(getattr(entry, register), bits)})
        result.append(entry)
    return result


def describe_policy(policy: str) -> str:
    """One line on what ``policy`` hides from the guest."""
    if policy == "compat":
        hidden = []
        for *_, why in COMPAT_HIDDEN:
            if why not in hidden:
                hidden.append(why)
        return "hiding " + ", ".join(hidden) + " from the guest"
    return "passing every CPU feature KVM supports to the guest"
