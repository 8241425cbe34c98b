"""ELF64 core dumps of a guest, in the layout QEMU's ``dump-guest-memory`` writes.

One PT_NOTE (per vCPU an ``NT_PRSTATUS`` "CORE" note and a "QEMU" CPU-state
note, plus a "PYVMM" note saying what ended the run), then one PT_LOAD per
guest RAM range with ``p_paddr`` = its guest-physical base: gdb and crash
read it.  Writing streams RAM straight from guest memory in small chunks (no
second copy of RAM), seeks over all-zero chunks (a sparse file), and goes to
a temporary file renamed into place, so a half-written dump never replaces a
good one.  Reading (``CoreDump``) is pyelftools' (its program headers and
note iterator), so a core is walked by one parser, the one gdb users know.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import IO, Iterable, cast

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

from pyvmm.dump import DumpError
from pyvmm.dump.state import GENERAL, CoreSegment, VcpuRegisters
from pyvmm.host.inputfile import open_input

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III")
ET_CORE, EM_X86_64 = 4, 62
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS = 1
QEMU_NOTE_TYPE = 0
PYVMM_NOTE_TYPE = 0x4D4D5650  # "PVMM"
#: struct elf_prstatus on x86-64: 112 bytes, user_regs_struct (27 u64), fpvalid.
PRSTATUS = struct.Struct("<12xh2xQQiiii64x27QI4x")
PR_REG_ORDER = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "rflags",
                "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")
#: QEMU's QEMUCPUState (target/i386/arch_dump.c), version 1.
QEMU_CPU_STATE = struct.Struct("<II18Q240s5QQ")
QEMU_SEGMENT = struct.Struct("<IIIIQ")
QEMU_SEGMENT_ORDER = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr")
#: RAM is written and checked for zeros this many bytes at a time.
CHUNK = 64 << 10
PAGE = 4096
#: Longest shortest-string ``strings`` takes (a regex repeat count has a limit).
MAX_STRING_MIN = 1 << 20
_ZERO_CHUNK = bytes(CHUNK)


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return NOTE_HEADER.pack(len(name), len(desc), kind) + pad(name) + pad(desc)


def _prstatus(vcpu: VcpuRegisters) -> bytes:
    values = dict(vcpu.regs)
    values["orig_rax"] = values.get("rax", 0)
    for name in ("cs", "ss", "ds", "es", "fs", "gs"):
        values[name] = vcpu.segments.get(name, CoreSegment()).selector
    values["fs_base"] = vcpu.segments.get("fs", CoreSegment()).base
    values["gs_base"] = vcpu.segments.get("gs", CoreSegment()).base
    return PRSTATUS.pack(0, 0, 0, vcpu.index + 1, 0, 0, 0,
                         *(values.get(name, 0) for name in PR_REG_ORDER), 0)


def _qemu_state(vcpu: VcpuRegisters) -> bytes:
    segments = b"".join(
        QEMU_SEGMENT.pack(s.selector, s.limit & 0xFFFFFFFF, s.flags, 0, s.base)
        for s in (vcpu.segments.get(n, CoreSegment()) for n in QEMU_SEGMENT_ORDER))
    segments += QEMU_SEGMENT.pack(0, vcpu.gdt[1], 0, 0, vcpu.gdt[0])
    segments += QEMU_SEGMENT.pack(0, vcpu.idt[1], 0, 0, vcpu.idt[0])
    general = (vcpu.regs.get(n, 0) for n in GENERAL)
    control = (vcpu.control.get(n, 0) for n in ("cr0", "cr1", "cr2", "cr3", "cr4"))
    return QEMU_CPU_STATE.pack(1, QEMU_CPU_STATE.size, *general, segments, *control, 0)


def build_notes(vcpus: Iterable[VcpuRegisters], note: dict | None) -> bytes:
    notes = b""
    for vcpu in vcpus:
        notes += _note(b"CORE", NT_PRSTATUS, _prstatus(vcpu))
        notes += _note(b"QEMU", QEMU_NOTE_TYPE, _qemu_state(vcpu))
    if note is not None:
        notes += _note(b"PYVMM", PYVMM_NOTE_TYPE, json.dumps(note).encode())
    return notes


def write_core(path: str, memory, vcpus: list[VcpuRegisters], note: dict | None = None) -> int:
    """Write ``memory`` (a GuestMemory) and ``vcpus`` as an ELF core; return its size."""
    notes = build_notes(vcpus, note)
    regions = list(memory.regions)
    phnum = 1 + len(regions)
    notes_offset = ELF_HEADER.size + phnum * PROGRAM_HEADER.size
    offset = (notes_offset + len(notes) + PAGE - 1) // PAGE * PAGE
    headers = [PROGRAM_HEADER.pack(PT_NOTE, 0, notes_offset, 0, 0, len(notes), len(notes), 0)]
    for region in regions:
        headers.append(PROGRAM_HEADER.pack(PT_LOAD, 0, offset, 0, region.guest_base,
                                           region.size, region.size, 0))
        offset += region.size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ELF_HEADER.pack(ident, ET_CORE, EM_X86_64, 1, 0, ELF_HEADER.size, 0, 0,
                             ELF_HEADER.size, PROGRAM_HEADER.size, phnum, 0, 0, 0)
    fd, temporary = _create_temporary(path)
    try:
        os.write(fd, header + b"".join(headers) + notes)
        os.lseek(fd, (notes_offset + len(notes) + PAGE - 1) // PAGE * PAGE, os.SEEK_SET)
        for region in regions:
            _write_ram(fd, memoryview(region.buffer))
        os.ftruncate(fd, offset)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        os.unlink(temporary)
        if isinstance(exc, OSError):
            raise DumpError(f"cannot write dump {path!r}: {exc.strerror}") from None
        raise
    return offset


def _create_temporary(path: str) -> tuple[int, str]:
    """A new file beside ``path`` that nobody else can have made or can read.

    The dump holds guest RAM and may be written by root into a directory others
    can write: its name is unpredictable, it is created with O_EXCL and
    O_NOFOLLOW (``mkstemp``) and mode 0600, and the rename replaces whatever
    ``path`` was (a planted symlink is replaced, never followed).
    """
    if os.path.isdir(path):
        raise DumpError(f"cannot write dump {path!r}: it is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                         suffix=".tmp", dir=directory)
    except OSError as exc:
        raise DumpError(f"cannot write dump {path!r}: {exc.strerror}") from None
    return fd, temporary


def _write_ram(fd: int, ram: memoryview) -> None:
    """Stream one RAM range; all-zero chunks become holes."""
    for start in range(0, len(ram), CHUNK):
        chunk = ram[start:start + CHUNK]
        data = chunk.tobytes()  # one small transient copy: comparing views is 40x slower
        if data == _ZERO_CHUNK[:len(data)]:
            os.lseek(fd, len(data), os.SEEK_CUR)
            continue
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


# -- reading ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadRange:
    paddr: int
    size: int
    offset: int


class CoreDump:
    """A dump opened for reading: RAM ranges, vCPU states, the pyvmm note."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = open_input(path, "dump", DumpError)
        try:
            if os.fstat(fd).st_size == 0:
                raise DumpError(f"{path}: not an ELF file (it is empty)")
            self._map = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            raise DumpError(f"cannot read dump {path!r}: {exc}") from None
        finally:
            os.close(fd)
        self.ranges: list[LoadRange] = []
        self.vcpus: list[VcpuRegisters] = []
        self.note: dict = {}
        self._parse()

    def _parse(self) -> None:
        """Ranges, vCPUs and the pyvmm note, read with pyelftools from the mapping."""
        if len(self._map) < ELF_HEADER.size or self._map[:4] != b"\x7fELF":
            raise DumpError(f"{self.path}: not an ELF file")
        qemu_states = []
        try:
            # An mmap is a file-like stream (read, seek, tell): nothing is copied.
            elf = ELFFile(cast(IO[bytes], self._map))
            if elf.elfclass != 64 or not elf.little_endian or elf["e_type"] != "ET_CORE" \
                    or elf["e_machine"] != "EM_X86_64":
                raise DumpError(f"{self.path}: not an x86-64 ELF core (a guest memory dump)")
            for segment in elf.iter_segments():
                if segment["p_offset"] + segment["p_filesz"] > len(self._map):
                    raise DumpError(f"{self.path}: truncated (a segment runs past the end; "
                                    "was the dump cut short?)")
                if segment["p_type"] == "PT_LOAD":
                    self.ranges.append(LoadRange(segment["p_paddr"], segment["p_filesz"],
                                                 segment["p_offset"]))
                elif isinstance(segment, NoteSegment):
                    for note in segment.iter_notes():
                        if note["n_name"] == "QEMU" and note["n_type"] == QEMU_NOTE_TYPE \
                                and len(note["n_descdata"]) >= QEMU_CPU_STATE.size:
                            qemu_states.append(note["n_descdata"])
                        elif note["n_name"] == "PYVMM" and note["n_type"] == PYVMM_NOTE_TYPE:
                            self.note = _pyvmm_note(note["n_descdata"])
        except (ELFError, struct.error) as exc:
            raise DumpError(f"{self.path}: truncated or corrupt ({exc})") from None
        self.vcpus = [_vcpu_from_qemu(index, desc) for index, desc in enumerate(qemu_states)]
        self.ranges.sort(key=lambda r: r.paddr)

    # -- memory ------------------------------------------------------------------

    def contains(self, paddr: int, length: int = 1) -> bool:
        return any(r.paddr <= paddr and paddr + length <= r.paddr + r.size for r in self.ranges)

    def read(self, paddr: int, length: int) -> bytes:
        for r in self.ranges:
            if r.paddr <= paddr and paddr + length <= r.paddr + r.size:
                start = r.offset + paddr - r.paddr
                return self._map[start:start + length]
        raise DumpError(f"guest-physical {paddr:#x}+{length:#x} is not in the dump's RAM")

    def read_u64(self, paddr: int) -> int:
        return struct.unpack("<Q", self.read(paddr, 8))[0]

    def find(self, needle: bytes, maximum: int) -> list[int]:
        """Guest-physical addresses of ``needle`` in RAM, at most ``maximum``."""
        hits: list[int] = []
        for r in self.ranges:
            at = self._map.find(needle, r.offset, r.offset + r.size)
            while at >= 0 and len(hits) < maximum:
                hits.append(r.paddr + at - r.offset)
                at = self._map.find(needle, at + 1, r.offset + r.size)
        return hits

    def strings(self, minimum: int, maximum: int) -> list[tuple[int, str]]:
        """(guest-physical address, text) of printable ASCII runs, at most ``maximum``."""
        if not 1 <= minimum <= MAX_STRING_MIN:
            raise DumpError(f"--min {minimum}: choose a length from 1 to {MAX_STRING_MIN}")
        pattern = re.compile(rb"[\x20-\x7e]{%d,}" % minimum)
        found: list[tuple[int, str]] = []
        for r in self.ranges:
            for match in pattern.finditer(self._map, r.offset, r.offset + r.size):
                if len(found) >= maximum:
                    return found
                found.append((r.paddr + match.start() - r.offset, match.group().decode()))
        return found

    def close(self) -> None:
        self._map.close()


def _pyvmm_note(desc: bytes) -> dict:
    """The pyvmm note's JSON object; a crafted one is ignored, as an unknown note."""
    try:
        note = json.loads(desc)
    except (ValueError, RecursionError):
        return {}
    return note if isinstance(note, dict) else {}


def _vcpu_from_qemu(index: int, desc: bytes) -> VcpuRegisters:
    fields = QEMU_CPU_STATE.unpack_from(desc, 0)
    general = dict(zip(GENERAL, fields[2:20]))
    raw_segments = fields[20]
    segments = {}
    for i, name in enumerate(QEMU_SEGMENT_ORDER):
        selector, limit, flags, _, base = QEMU_SEGMENT.unpack_from(raw_segments, i * 24)
        segments[name] = CoreSegment(selector, base, limit, flags)
    _, gdt_limit, _, _, gdt_base = QEMU_SEGMENT.unpack_from(raw_segments, 8 * 24)
    _, idt_limit, _, _, idt_base = QEMU_SEGMENT.unpack_from(raw_segments, 9 * 24)
    cr = fields[21:26]
    control = {"cr0": cr[0], "cr2": cr[2], "cr3": cr[3], "cr4": cr[4]}
    return VcpuRegisters(index, general, segments, control, (gdt_base, gdt_limit),
                     (idt_base, idt_limit))
