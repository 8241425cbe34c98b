"""The PVH boot ABI: ``struct hvm_start_info`` and friends (Xen's start_info.h).

A PVH kernel starts in 32-bit protected mode, paging off, with EBX holding
the physical address of ``hvm_start_info``: a magic, the command line, the
initrd as a module, the RSDP and an e820-style memory map (version 1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.arch.x86_64.boot_params import E820Entry

HVM_START_MAGIC = 0x336EC578
#: Version 1 adds the memory map fields.
HVM_START_VERSION = 1
#: magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, reserved
START_INFO = struct.Struct("<IIIIQQQQII")
MODLIST_ENTRY = struct.Struct("<QQQQ")   # paddr, size, cmdline_paddr, reserved
MEMMAP_ENTRY = struct.Struct("<QQII")    # addr, size, type, reserved


@dataclass(frozen=True)
class StartInfo:
    """The addresses hvm_start_info points at, and what it says."""

    cmdline_address: int
    rsdp_address: int
    memmap_address: int
    memmap: tuple[E820Entry, ...]
    modlist_address: int = 0
    initrd: tuple[int, int] | None = None

    def pack(self) -> bytes:
        modules = 1 if self.initrd else 0
        return START_INFO.pack(HVM_START_MAGIC, HVM_START_VERSION, 0, modules,
                               self.modlist_address if modules else 0, self.cmdline_address,
                               self.rsdp_address, self.memmap_address, len(self.memmap), 0)

    def pack_modlist(self) -> bytes:
        if not self.initrd:
            return b""
        return MODLIST_ENTRY.pack(self.initrd[0], self.initrd[1], 0, 0)

    def pack_memmap(self) -> bytes:
        return b"".join(MEMMAP_ENTRY.pack(e.addr, e.size, e.type, 0) for e in self.memmap)
