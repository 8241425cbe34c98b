"""Crafted ELF kernels for loader tests: header, program headers, a note, segments."""

from __future__ import annotations

import struct

EM_X86_64 = 62
ET_EXEC = 2
PT_LOAD, PT_NOTE = 1, 4


def pvh_note(entry: int) -> bytes:
    return struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)


def make_elf(segments: list[tuple[int, bytes, int]], note: bytes | None = None, *,
             machine: int = EM_X86_64, elf_type: int = ET_EXEC,
             elf_class: int = 2) -> bytes:
    """``segments`` are (paddr, data, memsz); ``note`` becomes a PT_NOTE."""
    phdrs = [(PT_LOAD, data, paddr, memsz) for paddr, data, memsz in segments]
    if note is not None:
        phdrs.append((PT_NOTE, note, 0, len(note)))
    offset = 64 + 56 * len(phdrs)
    headers, body = b"", b""
    for kind, data, paddr, memsz in phdrs:
        headers += struct.pack("<IIQQQQQQ", kind, 5, offset + len(body), paddr | (
            0xFFFFFFFF80000000 if kind == PT_LOAD else 0), paddr, len(data), memsz, 8)
        body += data
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", elf_type, machine, 1, 0, 64, 0, 0,
                                 64, 56, len(phdrs), 64, 0, 0)
    return header + headers + body
