"""The host CPU's own CPUID instruction, for the leaves a guest sees as the host's.

KVM_GET_SUPPORTED_CPUID leaves some of them empty (the brand string; leaf
0x80000005 before Linux 6.6), so the machine reads them here, as QEMU's
``-cpu host`` does, and pyvmm.arch.x86_64.cpuid decides what to take.
"""

from __future__ import annotations

from typing import Callable

from pyvmm.host._host_cffi import ffi, lib

#: (leaf, subleaf) -> (eax, ebx, ecx, edx).
CpuidReader = Callable[[int, int], tuple[int, int, int, int]]


def _read(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    regs = ffi.new("unsigned int[4]")
    lib.pyvmm_cpuid(leaf, subleaf, regs)
    return regs[0], regs[1], regs[2], regs[3]


def host_cpuid() -> CpuidReader | None:
    """The reader, or None where the compiled helper predates it (rebuild with
    ``python3 setup.py build_ext --inplace``)."""
    return _read if hasattr(lib, "pyvmm_cpuid") else None
