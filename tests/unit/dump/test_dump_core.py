"""ELF core dumps over synthetic guest memory: round trip, sparseness, atomicity, errors."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pyvmm.dump import DumpError
from pyvmm.dump.core import CoreDump, write_core
from pyvmm.dump.state import CoreSegment, VcpuRegisters
from pyvmm.memory import GuestMemory, MemoryRegion

MIB = 1 << 20


def two_range_memory() -> GuestMemory:
    """RAM at 0 and at 4 GiB with a hole between, as a large guest has."""
    return GuestMemory([MemoryRegion(0, 2 * MIB, bytearray(2 * MIB)),
                        MemoryRegion(1 << 32, MIB, bytearray(MIB))])


def vcpu(index: int, rip: int) -> VcpuRegisters:
    regs = {name: 0x1000 + i for i, name in enumerate(
        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"))}
    regs.update(rip=rip, rflags=0x246)
    return VcpuRegisters(index, regs, {"cs": CoreSegment(0x10, 0, 0xFFFFFFFF, 0xA09B00)},
                     {"cr0": 0x80000011, "cr3": 0x9000, "cr4": 0x20, "cr2": 0, "efer": 0x500},
                     (0x500, 0x27), (0x520, 7))


def test_round_trip(tmp_path) -> None:
    memory = two_range_memory()
    memory.write(0x1234, b"low pattern")
    memory.write((1 << 32) + 0x10, b"high pattern")
    path = tmp_path / "guest.core"
    write_core(str(path), memory, [vcpu(0, 0xFFFFFFFF81000000), vcpu(1, 0x1234)],
               {"reason": "test", "status": 8})
    dump = CoreDump(str(path))
    assert [(r.paddr, r.size) for r in dump.ranges] == [(0, 2 * MIB), (1 << 32, MIB)]
    assert dump.read(0x1234, 11) == b"low pattern"
    assert dump.read((1 << 32) + 0x10, 12) == b"high pattern"
    assert [v.regs["rip"] for v in dump.vcpus] == [0xFFFFFFFF81000000, 0x1234]
    assert dump.vcpus[0].control["cr3"] == 0x9000 and dump.vcpus[0].regs["rbx"] == 0x1001
    assert dump.vcpus[0].segments["cs"].selector == 0x10
    assert dump.vcpus[0].gdt == (0x500, 0x27)
    assert dump.note == {"reason": "test", "status": 8}
    with pytest.raises(DumpError, match="not in the dump's RAM"):
        dump.read(3 * MIB, 1)  # the hole


def test_zero_ram_is_written_sparse(tmp_path) -> None:
    memory = GuestMemory.from_bytes(64 * MIB)
    memory.write(32 * MIB, b"one page of data")
    path = tmp_path / "sparse.core"
    size = write_core(str(path), memory, [vcpu(0, 0)])
    assert os.path.getsize(path) == size > 64 * MIB
    assert os.stat(path).st_blocks * 512 < 2 * MIB  # only headers and one chunk
    assert CoreDump(str(path)).read(32 * MIB, 16) == b"one page of data"


def test_failed_write_leaves_the_previous_dump(tmp_path, monkeypatch) -> None:
    path = tmp_path / "guest.core"
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0x1111)])
    before = path.read_bytes()

    import pyvmm.dump.core as core

    def broken(fd, ram):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(core, "_write_ram", broken)
    with pytest.raises(DumpError, match="No space left"):
        write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0x2222)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["guest.core"]  # no temp file left


@pytest.mark.parametrize("content, message", [
    (b"", "not an ELF"),
    (b"hello world" * 10, "not an ELF"),
    (b"\x7fELF\x01\x01\x01" + bytes(100), "not an x86-64 ELF core"),
])
def test_not_a_dump(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(DumpError, match=message):
        CoreDump(str(path))


def test_truncated_dump(tmp_path) -> None:
    path = tmp_path / "guest.core"
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(DumpError, match="truncated"):
        CoreDump(str(path))


def test_missing_dump(tmp_path) -> None:
    with pytest.raises(DumpError, match="not found"):
        CoreDump(str(tmp_path / "nope"))


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_reads_the_registers(tmp_path) -> None:
    path = tmp_path / "guest.core"
    write_core(str(path), two_range_memory(), [vcpu(0, 0x101234)])
    out = subprocess.run(["gdb", "-batch", "-ex", "info registers rip rbx",
                          "-core", str(path)], capture_output=True, text=True).stdout
    assert "0x101234" in out and "0x1001" in out


def test_dump_replaces_a_planted_symlink_and_is_private(tmp_path, monkeypatch) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    path = tmp_path / "guest.core"
    path.symlink_to(victim)
    modes = []
    real_replace = os.replace

    def replace(source, target):
        modes.append(os.stat(source).st_mode & 0o777)
        real_replace(source, target)
    monkeypatch.setattr(os, "replace", replace)
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    assert victim.read_bytes() == b"root's file"
    assert not path.is_symlink() and CoreDump(str(path)).vcpus[0].regs["rip"] == 0
    assert modes == [0o600]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guest.core", "victim"]


def test_temporary_names_are_not_predictable(tmp_path, monkeypatch) -> None:
    """A file planted where an older pyvmm put its temporary is left alone."""
    path = tmp_path / "guest.core"
    planted = tmp_path / f".guest.core.tmp-{os.getpid()}"
    planted.write_bytes(b"planted")
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    assert planted.read_bytes() == b"planted"


@pytest.mark.parametrize("target, message", [
    ("dir", "is a directory"),
    ("missing/guest.core", "No such file or directory"),
])
def test_unwritable_dump_targets_are_clean_errors(tmp_path, target, message) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(DumpError, match=message):
        write_core(str(tmp_path / target), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]
    assert list((tmp_path / "dir").iterdir()) == []


@pytest.mark.parametrize("field", [0, 4, 8])  # namesz, descsz, type of the first note
def test_corrupt_notes_are_read_without_a_traceback(tmp_path, field: int) -> None:
    """pyelftools walks the notes: a wild size ends the walk, never the process."""
    import struct

    from pyvmm.dump.core import ELF_HEADER, PROGRAM_HEADER

    path = tmp_path / "guest.core"
    write_core(str(path), two_range_memory(), [vcpu(0, 0x1234)], {"reason": "x"})
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, ELF_HEADER.size + 3 * PROGRAM_HEADER.size + field, 0x7FFFFFFF)
    path.write_bytes(data)
    try:
        dump = CoreDump(str(path))
    except DumpError:
        return
    assert len(dump.ranges) == 2 and len(dump.vcpus) <= 1


@pytest.mark.parametrize("kind", ["fifo", "char-device", "socket"])
def test_a_dump_never_replaces_what_is_not_a_regular_file(tmp_path, kind: str) -> None:
    """--dump /dev/null as root replaced the device node; a FIFO or socket vanished too."""
    import socket
    import stat

    path = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "char-device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    else:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.close()
    before = os.lstat(path)
    with pytest.raises(DumpError, match="a dump replaces only a regular file"):
        write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_a_dump_replaces_a_regular_file(tmp_path) -> None:
    path = tmp_path / "guest.core"
    path.write_bytes(b"an older dump")
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    assert CoreDump(str(path)).vcpus[0].regs["rip"] == 0


@pytest.mark.parametrize("offset, fmt, value", [
    (32, "<Q", 1 << 63),   # e_phoff: OverflowError from pyelftools' seek
    (56, "<H", 0xFFFF),    # e_phnum: ValueError (seek out of range)
    (32, "<Q", 1 << 40),   # e_phoff past the end
    (54, "<H", 8),         # e_phentsize that is not Elf64_Phdr's
], ids=["phoff-2^63", "phnum-0xffff", "phoff-past-end", "phentsize"])
def test_crafted_program_headers_are_one_error(tmp_path, offset: int, fmt: str,
                                               value: int) -> None:
    import struct

    path = tmp_path / "guest.core"
    write_core(str(path), GuestMemory.from_bytes(MIB), [vcpu(0, 0)])
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    with pytest.raises(DumpError, match="truncated or corrupt"):
        CoreDump(str(path))
