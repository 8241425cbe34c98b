"""Guest memory: guest-physical RAM ranges backed by host buffers.

Every access is bounds-checked against the ranges: an address outside guest RAM
(or an access that crosses out of a range) raises ``GuestMemoryError`` and never
touches host memory.  Views are ``memoryview`` slices of the backing buffer, so
devices can read and write guest buffers without copying.

``GuestMemory.anonymous`` backs RAM with private anonymous mmaps (what KVM
registers as memory slots), each aligned for huge pages (``map_ram``), or
with ``shared=True`` with one file mapped ``MAP_SHARED`` (``shared_ram_file``), so
that a vhost-user backend (virtiofsd) can map the same RAM from the fd;
``GuestMemory.private_file`` maps a snapshot's memory file copy-on-write;
``GuestMemory.from_bytes`` backs it with a ``bytearray`` for unit tests that
need no VM.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from pyvmm.errors import GuestMemoryError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: <sys/mman.h> MAP_NORESERVE on Linux x86-64: Python 3.11's mmap module lacks the name.
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
#: x86-64 huge page sizes: KVM maps the guest with pages as large as the host's
#: backing allows, so RAM starts on a 2 MiB (1 GiB for large guests) boundary.
HUGE_PAGE = 2 << 20
GIGA_PAGE = 1 << 30


def ram_alignment(size: int) -> int:
    """The host alignment for a RAM range of ``size`` bytes (as QEMU's qemu_ram_mmap)."""
    return GIGA_PAGE if size >= GIGA_PAGE else HUGE_PAGE


def _host_address(mapping: mmap.mmap) -> int:
    import ctypes  # only without address_of: its import is start-up time a run can skip

    anchor = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # the export would keep the mapping from being closed


def map_ram(size: int,
            address_of: Callable[[mmap.mmap], int] | None = None) -> tuple[mmap.mmap, memoryview]:
    """Map ``size`` bytes of guest RAM: the mapping and the aligned view of it to use.

    Over-maps by the alignment and uses the aligned part, so the guest's
    2 MiB pages are 2 MiB host pages once transparent huge pages back them
    (``MADV_HUGEPAGE``); otherwise KVM's nested page tables use 4 KiB pages.
    The unused head and tail are never touched, so they cost address space
    only (``address_of`` tells where the mapping landed: ctypes if not given); ``MAP_NORESERVE`` keeps a large, mostly untouched guest from
    charging its whole size to the host up front.
    """
    align = ram_alignment(size)
    mapping = mmap.mmap(-1, size + align, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                        | MAP_NORESERVE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    offset = -(address_of or _host_address)(mapping) % align
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, offset, size)
    except OSError:
        pass  # a host kernel without transparent huge pages: 4 KiB pages it is
    mapping.madvise(mmap.MADV_DONTFORK)  # a child (a helper we exec) never needs guest RAM
    return mapping, memoryview(mapping)[offset:offset + size]


#: The new mount API's system calls on x86-64 (fsopen(2), fsconfig(2), fsmount(2)) and
#: their flags from <linux/mount.h>: Python's os module has none of them.
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432
_FSOPEN_CLOEXEC = _FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_CREATE = 1, 6


def shared_ram_file(size: int) -> int:
    """An fd for ``size`` bytes of guest RAM that vhost-user back ends map too.

    Where this process may mount (root), an unlinked file on a tmpfs of its own,
    mounted ``huge=always`` and attached nowhere (the new mount API: no mount table
    lists it, and it goes with the last fd and mapping): its pages are 2 MiB whatever
    the host's ``shmem_enabled``, whose Debian default ``never`` gives a memfd 4 KiB
    pages, and KVM's nested page tables with them (measured in the rig: a systemd
    boot from qcow2 through qemu-storage-daemon 87.9 s with 4 KiB pages, 68.7 s with
    2 MiB).  Elsewhere a memfd.
    """
    try:
        return huge_tmpfs_file(size)
    except OSError:
        return os.memfd_create("pyvmm-guest-ram", os.MFD_CLOEXEC)


def huge_tmpfs_possible() -> bool:
    """Whether ``shared_ram_file`` gets its own tmpfs here (what ``pyvmm check`` says)."""
    try:
        os.close(huge_tmpfs_file(HUGE_PAGE))
    except OSError:
        return False
    return True


def huge_tmpfs_file(size: int) -> int:
    """The file of ``shared_ram_file`` on its own tmpfs; OSError where this process
    may not mount one (EPERM without CAP_SYS_ADMIN, ENOSYS before Linux 5.2)."""
    import ctypes  # only for shared RAM: its import is start-up time other runs skip

    libc = ctypes.CDLL(None, use_errno=True)

    def call(*args: object) -> int:
        result = libc.syscall(*args)
        if result < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        return int(result)

    context = call(_SYS_FSOPEN, b"tmpfs", _FSOPEN_CLOEXEC)
    try:
        for key, value in ((b"huge", b"always"), (b"size", str(max(size, 1)).encode()),
                           (b"mode", b"0700")):
            call(_SYS_FSCONFIG, context, _FSCONFIG_SET_STRING, key, value, 0)
        call(_SYS_FSCONFIG, context, _FSCONFIG_CMD_CREATE, None, None, 0)
        mount = call(_SYS_FSMOUNT, context, _FSMOUNT_CLOEXEC, 0)
    finally:
        os.close(context)
    try:
        fd = os.open("guest-ram", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=mount)
        os.unlink("guest-ram", dir_fd=mount)
    finally:
        os.close(mount)
    return fd


def _advise_huge_pages(mapping: mmap.mmap) -> None:
    """Ask for transparent huge pages behind shared RAM too, as QEMU does for its memfd
    backends: the host kernel gives them where its shmem_enabled is ``advise`` (or
    ``within_size``/``always``; it then also aligns the mapping), and KVM's nested page
    tables then use 2 MiB pages; with Debian's default ``never`` it is 4 KiB pages."""
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass  # no transparent huge pages in this kernel


@dataclass(frozen=True)
class MemoryRegion:
    """One contiguous range of guest-physical RAM and the buffer behind it."""

    guest_base: int
    size: int
    buffer: mmap.mmap | bytearray | memoryview
    #: The mapping ``buffer`` is a view of, closed with the memory (None: bytearray).
    mapping: mmap.mmap | None = field(default=None, compare=False)
    #: With shared RAM: the memfd behind the buffer and the buffer's offset in it.
    fd: int | None = None
    fd_offset: int = 0

    @property
    def guest_end(self) -> int:
        """First guest-physical address past the region."""
        return self.guest_base + self.size


class GuestMemory:
    """Guest RAM as sorted, non-overlapping regions."""

    def __init__(self, regions: Sequence[MemoryRegion]) -> None:
        ordered = sorted(regions, key=lambda r: r.guest_base)
        for before, after in zip(ordered, ordered[1:]):
            if before.guest_end > after.guest_base:
                raise ValueError(
                    f"memory regions overlap at {after.guest_base:#x}")
        self.regions: tuple[MemoryRegion, ...] = tuple(ordered)
        self._bases = [r.guest_base for r in ordered]
        self._views = [memoryview(r.buffer) for r in ordered]
        self._memfd: int | None = None

    @classmethod
    def anonymous(cls, ranges: Sequence[tuple[int, int]],
                  shared: bool = False,
                  address_of: Callable[[mmap.mmap], int] | None = None) -> "GuestMemory":
        """Back each ``(guest_base, size)`` range with an anonymous mapping.

        Private RAM is huge-page aligned and advised (``map_ram``).  ``shared``
        puts all ranges in one memfd, back to back, mapped ``MAP_SHARED`` (each
        region records its fd and offset for ``VHOST_USER_SET_MEM_TABLE``).
        """
        if not shared:
            regions = []
            for base, size in ranges:
                mapping, view = map_ram(size, address_of)
                regions.append(MemoryRegion(base, size, view, mapping))
            return cls(regions)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        fd = shared_ram_file(sum(size for _, size in ranges))
        try:
            os.ftruncate(fd, sum(size for _, size in ranges))
            regions, offset = [], 0
            for base, size in ranges:
                buffer = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | MAP_NORESERVE, prot=prot,
                                   offset=offset)
                _advise_huge_pages(buffer)
                regions.append(MemoryRegion(base, size, buffer, None, fd, offset))
                offset += size
        except BaseException:
            os.close(fd)
            raise
        memory = cls(regions)
        memory._memfd = fd
        return memory

    @classmethod
    def private_file(cls, fd: int, ranges: Sequence[tuple[int, int, int]]) -> "GuestMemory":
        """Each ``(guest_base, size, file_offset)`` range mapped ``MAP_PRIVATE`` from ``fd``.

        A restored snapshot's RAM: pages are read from the file (the page cache)
        when first touched and a write copies the page for this machine alone, so
        machines restored from one file share every page they leave untouched.
        ``fd`` may be closed afterwards.
        """
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        regions: list[MemoryRegion] = []
        try:
            for base, size, offset in ranges:
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE | MAP_NORESERVE,
                                    prot=prot, offset=offset)
                regions.append(MemoryRegion(base, size, mapping))
                mapping.madvise(mmap.MADV_DONTFORK)  # as map_ram: a helper child needs none
        except BaseException:
            for region in regions:
                assert isinstance(region.buffer, mmap.mmap)
                region.buffer.close()
            raise
        return cls(regions)

    @classmethod
    def from_bytes(cls, size: int, guest_base: int = 0) -> "GuestMemory":
        """A single bytearray-backed range, for tests."""
        return cls([MemoryRegion(guest_base, size, bytearray(size))])

    # -- queries -----------------------------------------------------------

    @property
    def total_size(self) -> int:
        """Bytes of RAM over all ranges."""
        return sum(r.size for r in self.regions)

    @property
    def end(self) -> int:
        """First guest-physical address past the highest range."""
        return self.regions[-1].guest_end if self.regions else 0

    def ranges(self) -> Iterator[tuple[int, int]]:
        """``(guest_base, size)`` of each range, in address order."""
        for region in self.regions:
            yield region.guest_base, region.size

    def _locate(self, gpa: int, length: int) -> tuple[int, int]:
        """Index of the region holding ``[gpa, gpa+length)`` and the offset in it."""
        index = bisect.bisect_right(self._bases, gpa) - 1
        if index >= 0 and length >= 0:
            region = self.regions[index]
            offset = gpa - region.guest_base
            if offset + length <= region.size:
                return index, offset
        raise GuestMemoryError(
            f"guest address range {gpa:#x}+{length:#x} is outside guest RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        """True when ``[gpa, gpa+length)`` lies inside one RAM range."""
        try:
            self._locate(gpa, length)
        except GuestMemoryError:
            return False
        return True

    # -- access ------------------------------------------------------------

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes at ``gpa``, without copying."""
        index, offset = self._locate(gpa, length)
        return self._views[index][offset:offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        """A copy of ``length`` bytes at ``gpa``."""
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` into guest RAM at ``gpa``."""
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, value: int = 0) -> None:
        """Set ``length`` bytes at ``gpa`` to ``value``."""
        index, offset = self._locate(gpa, length)
        buffer = self.regions[index].buffer
        buffer[offset:offset + length] = bytes([value]) * length

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack(self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack(self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack(self.view(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.view(gpa, 1)[0] = value

    def write_u16(self, gpa: int, value: int) -> None:
        _U16.pack_into(self.view(gpa, 2), 0, value)

    def write_u32(self, gpa: int, value: int) -> None:
        _U32.pack_into(self.view(gpa, 4), 0, value)

    def write_u64(self, gpa: int, value: int) -> None:
        _U64.pack_into(self.view(gpa, 8), 0, value)

    def close(self) -> None:
        """Release the views and unmap mmap-backed ranges."""
        for view in self._views:
            view.release()
        self._views = []
        for region in self.regions:
            if isinstance(region.buffer, memoryview):
                region.buffer.release()
            if region.mapping is not None:
                region.mapping.close()
            elif isinstance(region.buffer, mmap.mmap):
                region.buffer.close()
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None
