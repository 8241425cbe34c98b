"""Load an ELF ``vmlinux`` (or any x86-64 ELF with a PVH entry) with pyelftools.

PT_LOAD segments go to their physical addresses (``p_paddr``); the PVH entry
comes from the ``XEN_ELFNOTE_PHYS32_ENTRY`` note, where Linux (CONFIG_PVH),
QEMU's PVH loader and Firecracker all look for it.  The checks here are the
ones a corrupt or foreign file fails: not ELF, not x86-64, no PVH note, a
segment that runs past the file or lands outside guest RAM.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pyvmm.errors import LoaderError
from pyvmm.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
#: Note type of the 32-bit PVH entry point, in notes named "Xen".
XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass(frozen=True)
class ElfKernel:
    """Where an ELF kernel went, and where it starts."""

    entry_address: int       # the PVH 32-bit entry (physical)
    load_address: int        # lowest p_paddr
    end_address: int         # first byte past the highest segment


def is_elf(image: bytes) -> bool:
    return image[:4] == ELF_MAGIC


def _pvh_entry(segment) -> int | None:
    """The PVH entry in a PT_NOTE segment (a note named "Xen" of type 18), or None."""
    for note in segment.iter_notes():
        desc = note["n_descdata"]
        if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY \
                and len(desc) in (4, 8):
            return int.from_bytes(desc, "little")
    return None


def load_elf(memory: GuestMemory, image: bytes) -> ElfKernel:
    """Copy the PT_LOAD segments into ``memory``; LoaderError says what is wrong."""
    # pyelftools takes ~25 ms to import: only a PVH boot pays for it, not a bzImage one.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if not is_elf(image):
        raise LoaderError("kernel is not an ELF file")
    try:
        elf = ELFFile(io.BytesIO(image))
        machine, elf_class, elf_type = elf["e_machine"], elf.elfclass, elf["e_type"]
        segments = [elf.get_segment(i) for i in range(elf.num_segments())]
    except (ELFError, struct.error, ValueError) as exc:
        raise LoaderError(f"kernel ELF is corrupt: {exc}") from None
    if elf_class != 64 or machine != "EM_X86_64":
        raise LoaderError(f"kernel ELF is for {machine} ({elf_class}-bit), not x86-64")
    if elf_type != "ET_EXEC":
        raise LoaderError(f"kernel ELF is of type {elf_type}, not an executable")

    entry = None
    loads = []
    for segment in segments:
        kind = segment["p_type"]
        offset, filesz = segment["p_offset"], segment["p_filesz"]
        if kind in ("PT_LOAD", "PT_NOTE") and offset + filesz > len(image):
            raise LoaderError("kernel ELF is truncated: a segment runs past the end "
                              "of the file")
        if kind == "PT_NOTE" and entry is None:
            try:
                entry = _pvh_entry(segment)
            except (ELFError, struct.error, ValueError) as exc:
                raise LoaderError(f"kernel ELF is corrupt: {exc}") from None
        elif kind == "PT_LOAD" and segment["p_memsz"]:
            loads.append(segment)
    if entry is None:
        raise LoaderError("kernel ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                          "build Linux with CONFIG_PVH=y, or boot its bzImage")
    if not loads:
        raise LoaderError("kernel ELF has no loadable segments")

    for segment in loads:
        paddr, filesz, memsz = segment["p_paddr"], segment["p_filesz"], segment["p_memsz"]
        if filesz > memsz or not memory.contains(paddr, memsz):
            raise LoaderError(
                f"kernel ELF segment at {paddr:#x}+{memsz:#x} does not fit in guest RAM "
                "(outside it, or across the MMIO hole); give the guest more --memory")
        offset = segment["p_offset"]
        memory.write(paddr, image[offset:offset + filesz])
        memory.fill(paddr + filesz, memsz - filesz)
    low = min(s["p_paddr"] for s in loads)
    high = max(s["p_paddr"] + s["p_memsz"] for s in loads)
    if not any(s["p_paddr"] <= entry < s["p_paddr"] + s["p_memsz"] for s in loads):
        raise LoaderError(f"kernel ELF's PVH entry {entry:#x} is outside its segments")
    return ElfKernel(entry_address=entry, load_address=low, end_address=high)
