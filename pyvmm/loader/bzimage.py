"""The Linux x86 boot protocol's bzImage: parse the setup header, load the kernel.

Only the 64-bit entry is used (``XLF_KERNEL_64``, protocol 2.12+): the
protected-mode part goes to its preferred address and the CPU starts at
load address + 0x200.  See Documentation/arch/x86/boot.rst.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.errors import LoaderError
from pyvmm.memory import GuestMemory

# Setup header offsets in the image (and in the zero page, which copies it).
OFF_SETUP_SECTS = 0x1F1
OFF_BOOT_FLAG = 0x1FE
OFF_JUMP = 0x200
OFF_HEADER_MAGIC = 0x202
OFF_VERSION = 0x206
#: u16: where the kernel's version string is, as an offset from 0x200 (0: none).
OFF_KERNEL_VERSION = 0x20E
OFF_LOADFLAGS = 0x211
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
#: The header must reach past init_size for every field above to be present.
HEADER_END = 0x264

BOOT_FLAG = 0xAA55
HEADER_MAGIC = b"HdrS"
#: Protocol 2.12 added xloadflags, which is how a kernel says it has a 64-bit entry.
MIN_PROTOCOL = 0x020C
XLF_KERNEL_64 = 0x1
#: Offset of the 64-bit entry point from the load address.
ENTRY_64_OFFSET = 0x200
#: setup_sects == 0 means 4, for compatibility with ancient kernels.
DEFAULT_SETUP_SECTS = 4
SECTOR = 512


@dataclass(frozen=True)
class SetupHeader:
    """The setup header fields pyvmm honours, and the raw header to copy."""

    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    raw: bytes  # image bytes from 0x1f1 to the end of the header

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode part (boot sector + setup sectors)."""
        return (self.setup_sects + 1) * SECTOR

    @property
    def version_text(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


@dataclass(frozen=True)
class KernelImage:
    """Where a kernel went in guest memory."""

    load_address: int
    entry_address: int
    end_address: int
    header: SetupHeader


def parse_setup_header(image: bytes) -> SetupHeader:
    """Check and decode a bzImage's setup header; LoaderError says what is wrong."""
    if not image:
        raise LoaderError("kernel image is empty")
    if len(image) < HEADER_END:
        raise LoaderError(f"kernel image is truncated ({len(image)} bytes): "
                          "too short for a bzImage setup header")
    if (image[OFF_HEADER_MAGIC:OFF_HEADER_MAGIC + 4] != HEADER_MAGIC
            or struct.unpack_from("<H", image, OFF_BOOT_FLAG)[0] != BOOT_FLAG):
        raise LoaderError("kernel image is not a bzImage (no 'HdrS' boot header)")
    version = struct.unpack_from("<H", image, OFF_VERSION)[0]
    setup_sects = image[OFF_SETUP_SECTS] or DEFAULT_SETUP_SECTS
    header_end = max(HEADER_END, OFF_JUMP + 2 + image[OFF_JUMP + 1])
    header = SetupHeader(
        setup_sects=setup_sects,
        version=version,
        loadflags=image[OFF_LOADFLAGS],
        initrd_addr_max=struct.unpack_from("<I", image, OFF_INITRD_ADDR_MAX)[0],
        kernel_alignment=struct.unpack_from("<I", image, OFF_KERNEL_ALIGNMENT)[0],
        relocatable_kernel=bool(image[OFF_RELOCATABLE]),
        xloadflags=struct.unpack_from("<H", image, OFF_XLOADFLAGS)[0],
        cmdline_size=struct.unpack_from("<I", image, OFF_CMDLINE_SIZE)[0],
        pref_address=struct.unpack_from("<Q", image, OFF_PREF_ADDRESS)[0],
        init_size=struct.unpack_from("<I", image, OFF_INIT_SIZE)[0],
        raw=bytes(image[OFF_SETUP_SECTS:min(header_end, len(image))]),
    )
    if version < MIN_PROTOCOL:
        raise LoaderError(
            f"kernel uses boot protocol {header.version_text}; pyvmm needs 2.12 or "
            "newer (Linux 3.8+) for the 64-bit entry")
    if not header.xloadflags & XLF_KERNEL_64:
        raise LoaderError("kernel has no 64-bit entry point (XLF_KERNEL_64 not set): "
                          "pyvmm boots x86-64 kernels only")
    if len(image) <= header.setup_size:
        raise LoaderError(f"kernel image is truncated: {len(image)} bytes, but its "
                          f"setup code alone takes {header.setup_size}")
    return header


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment if alignment > 1 else value


def load_bzimage(memory: GuestMemory, image: bytes, highmem_start: int) -> KernelImage:
    """Copy the protected-mode kernel to its load address; return where it went.

    ``highmem_start`` is where the platform's high memory begins (1 MiB on a
    PC): the lowest address a kernel may go to, as linux-loader takes it.
    """
    header = parse_setup_header(image)
    payload = memoryview(image)[header.setup_size:]
    footprint = max(header.init_size, len(payload))
    low_end = next(iter(memory.ranges()))[1]  # RAM below the MMIO hole starts at 0

    load = header.pref_address or highmem_start
    if load + footprint > low_end and header.relocatable_kernel:
        load = _align_up(highmem_start, header.kernel_alignment)
    if load < highmem_start or load + footprint > low_end:
        needed = (load + footprint + (1 << 20) - 1) >> 20
        raise LoaderError(
            f"the kernel needs {footprint >> 20} MiB at {load:#x}: give the guest at "
            f"least {needed + 16}M of --memory")
    memory.write(load, payload)
    return KernelImage(load_address=load, entry_address=load + ENTRY_64_OFFSET,
                       end_address=load + footprint, header=header)


def kernel_release(image: bytes) -> str | None:
    """``6.1.0-56-amd64`` from a bzImage's version string, or None (not a bzImage, or none).

    Linux fills ``kernel_version``; a bzImage that is not Linux (pyvmm's tiny
    test guests) leaves it 0.  Command mode names ``/lib/modules/RELEASE`` by it.
    """
    if image[OFF_HEADER_MAGIC:OFF_HEADER_MAGIC + 4] != HEADER_MAGIC or \
            len(image) < OFF_KERNEL_VERSION + 2:
        return None
    (pointer,) = struct.unpack_from("<H", image, OFF_KERNEL_VERSION)
    start = OFF_JUMP + pointer
    if not pointer or start >= len(image):
        return None
    end = image.find(b"\0", start, start + 256)
    text = image[start:end if end >= 0 else start + 256].decode("ascii", "replace").split()
    return text[0] if text else None
