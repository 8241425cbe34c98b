"""Place the initrd as high as the kernel can reach, as boot loaders do."""

from __future__ import annotations

from pyvmm.errors import LoaderError
from pyvmm.memory import GuestMemory

#: The initrd starts on a page boundary (x86's 4 KiB pages), as boot loaders place it.
INITRD_ALIGNMENT = 4096


def place_initrd(memory: GuestMemory, size: int, kernel_end: int,
                 initrd_addr_max: int) -> int:
    """Highest page-aligned address for ``size`` bytes between the kernel and the limit."""
    low_end = next(iter(memory.ranges()))[1]
    limit = min(initrd_addr_max + 1 if initrd_addr_max else low_end, low_end)
    address = (limit - size) // INITRD_ALIGNMENT * INITRD_ALIGNMENT
    if size > limit or address < kernel_end:
        raise LoaderError(
            f"initrd ({size / (1 << 20):.1f} MiB) does not fit in guest RAM between the "
            f"kernel and {limit:#x}; give the guest more --memory")
    return address


def load_initrd(memory: GuestMemory, data: bytes, kernel_end: int,
                initrd_addr_max: int) -> int:
    """Write the initrd high in RAM; return its guest-physical address."""
    address = place_initrd(memory, len(data), kernel_end, initrd_addr_max)
    memory.write(address, data)
    return address
