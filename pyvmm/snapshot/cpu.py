"""Whether this host's KVM can give a restored guest every CPU feature it was shown.

A guest that saw AVX2 at boot uses it after a restore, wherever that is: a host
whose KVM can't offer a feature the saved CPUID has is refused, naming it, rather
than letting the guest meet #UD later.  What can be offered is what pyvmm's most
generous policy ("host") makes of this KVM's supported leaves.
"""

from __future__ import annotations

from typing import Sequence

from pyvmm.arch.x86_64.cpuid import CpuidEntry, adjust_cpuid

#: (leaf, subleaf, register) holding feature flags.
FEATURE_REGISTERS = ((0x1, 0, "ecx"), (0x1, 0, "edx"), (0x7, 0, "ebx"), (0x7, 0, "ecx"),
                     (0x7, 0, "edx"), (0xD, 1, "eax"), (0x80000001, 0, "ecx"),
                     (0x80000001, 0, "edx"))
#: Bits KVM sets from the guest's own control registers (OSXSAVE, APIC, OSPKE): not features.
DYNAMIC_BITS = {(0x1, 0, "ecx"): 1 << 27, (0x1, 0, "edx"): 1 << 9, (0x7, 0, "ecx"): 1 << 4}


def missing_features(saved: Sequence[CpuidEntry], supported: Sequence[CpuidEntry],
                     vcpu_id: int, cpu_count: int, tsc_deadline: bool) -> list[str]:
    """The feature bits ``saved`` has that this host can't offer, as readable names."""
    offered = adjust_cpuid(supported, vcpu_id, cpu_count, "host", tsc_deadline)

    def register(entries: Sequence[CpuidEntry], leaf: int, subleaf: int, name: str) -> int:
        return next((getattr(e, name) for e in entries
                     if e.function == leaf and e.index == subleaf), 0)

    missing = []
    for leaf, subleaf, name in FEATURE_REGISTERS:
        extra = register(saved, leaf, subleaf, name) & ~register(offered, leaf, subleaf, name)
        extra &= ~DYNAMIC_BITS.get((leaf, subleaf, name), 0)
        missing += [f"CPUID {leaf:#x}.{subleaf} {name} bit {bit}"
                    for bit in range(32) if extra >> bit & 1]
    return missing
