"""Kernel symbols (System.map or a vmlinux) and the kernel's fixed virtual mappings."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from pyvmm.dump import DumpError
from pyvmm.host.inputfile import open_input

#: x86-64 kernel text mapping: virtual __START_KERNEL_map + (physical - phys_base).
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
#: The direct map of all RAM without KASLR (page_offset_base, 4-level paging).
PAGE_OFFSET = 0xFFFF_8880_0000_0000
#: Largest System.map we read (a distribution kernel's is about 10 MiB).
MAX_SYSTEM_MAP = 256 << 20


def load_symbols(path: str) -> dict[str, int]:
    """name -> address from a System.map (text) or a vmlinux (ELF, via pyelftools)."""
    fd = open_input(path, "symbol file", DumpError)
    with os.fdopen(fd, "rb") as stream:
        try:
            head = stream.read(4)
            if head == b"\x7fELF":
                return _elf_symbols(path, stream)
            if os.fstat(fd).st_size > MAX_SYSTEM_MAP:
                raise DumpError(f"{path!r} is too large for a System.map "
                                f"(more than {MAX_SYSTEM_MAP >> 20} MiB)")
            text = (head + stream.read(MAX_SYSTEM_MAP)).decode("ascii", errors="replace")
        except OSError as exc:
            raise DumpError(f"cannot read {path!r}: {exc.strerror}") from None
    symbols: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            try:
                symbols.setdefault(parts[2], int(parts[0], 16))
            except ValueError:
                continue
    if not symbols:
        raise DumpError(f"{path!r} is neither a System.map nor an ELF vmlinux")
    return symbols


def _elf_symbols(path: str, stream: BinaryIO) -> dict[str, int]:
    try:
        stream.seek(0)
        table = ELFFile(stream).get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            raise DumpError(f"{path!r} has no symbol table (stripped?)")
        return {s.name: s["st_value"] for s in table.iter_symbols() if s.name}
    except (ELFError, ValueError, struct.error) as exc:
        raise DumpError(f"{path!r} is not a readable ELF: {exc}") from None


def kernel_virt_to_phys(vaddr: int, phys_base: int = 0) -> int | None:
    """Translate kernel text/data or direct-map addresses without page tables."""
    if vaddr >= START_KERNEL_MAP:
        return vaddr - START_KERNEL_MAP + phys_base
    if PAGE_OFFSET <= vaddr < PAGE_OFFSET + (1 << 46):
        return vaddr - PAGE_OFFSET
    return None
