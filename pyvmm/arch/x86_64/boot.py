"""The x86-64 Linux boot recipe: lay out guest memory, compute the boot CPU state.

Pure: it writes guest memory and returns plain data; the machine applies the
registers to the vCPUs.  The steps follow the 64-bit boot protocol
(Documentation/arch/x86/boot.rst): kernel at its preferred address, initrd
placed high, command line, zero page with the e820 map, identity-mapped page
tables, a GDT with __BOOT_CS/__BOOT_DS, and RSI pointing at the zero page.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot_params import build_zero_page, e820_map
from pyvmm.arch.x86_64.msr import boot_msrs
from pyvmm.arch.x86_64.paging import write_identity_page_tables
from pyvmm.arch.x86_64.pvh import StartInfo
from pyvmm.arch.x86_64.regs import (FpuState, GeneralRegisters, SpecialRegisters,
                                    boot_regs_64, boot_regs_pvh, boot_sregs_32, boot_sregs_64,
                                    write_boot_gdt)
from pyvmm.loader.bzimage import KernelImage, load_bzimage
from pyvmm.loader.cmdline import write_cmdline
from pyvmm.loader.elf import ElfKernel, is_elf, load_elf
from pyvmm.loader.initrd import load_initrd
from pyvmm.memory import GuestMemory


@dataclass(frozen=True)
class BootState:
    """Everything the machine applies to the vCPUs, and what was placed where."""

    kernel: KernelImage | ElfKernel
    initrd: tuple[int, int] | None
    cmdline: tuple[int, int]
    regs: GeneralRegisters
    sregs: SpecialRegisters
    fpu: FpuState
    msrs: list[tuple[int, int]]

    def regs_dict(self) -> dict[str, int]:
        """The boot CPU's general registers as KVM_SET_REGS field names."""
        return dataclasses.asdict(self.regs)


#: Linux's COMMAND_LINE_SIZE on x86, the limit for a PVH kernel's command line.
PVH_CMDLINE_SIZE = 2048


def prepare_boot(memory: GuestMemory, kernel_image: bytes, initrd_image: bytes | None,
                 cmdline: str, rsdp_address: int = 0) -> BootState:
    """Load a bzImage or an ELF (PVH) kernel, told apart by content; return CPU state."""
    if is_elf(kernel_image):
        return prepare_pvh_boot(memory, kernel_image, initrd_image, cmdline, rsdp_address)
    return prepare_bzimage_boot(memory, kernel_image, initrd_image, cmdline, rsdp_address)


def prepare_bzimage_boot(memory: GuestMemory, kernel_image: bytes,
                         initrd_image: bytes | None, cmdline: str,
                         rsdp_address: int = 0) -> BootState:
    """Load a bzImage (and initrd, command line) into ``memory``; return CPU state."""
    kernel = load_bzimage(memory, kernel_image, layout.HIMEM_START)
    header = kernel.header

    initrd = None
    if initrd_image is not None:
        address = load_initrd(memory, initrd_image, kernel.end_address,
                              header.initrd_addr_max)
        initrd = (address, len(initrd_image))

    cmdline_address, cmdline_length = write_cmdline(memory, cmdline, header.cmdline_size,
                                                    layout.CMDLINE_START,
                                                    layout.CMDLINE_MAX_SIZE)
    zero_page = build_zero_page(header, cmdline_address, initrd,
                                e820_map(list(memory.ranges())), acpi_rsdp_addr=rsdp_address)
    memory.write(layout.ZERO_PAGE_START, zero_page)

    cr3 = write_identity_page_tables(memory)
    write_boot_gdt(memory)
    return BootState(
        kernel=kernel,
        initrd=initrd,
        cmdline=(cmdline_address, cmdline_length),
        regs=boot_regs_64(kernel.entry_address, layout.ZERO_PAGE_START),
        sregs=boot_sregs_64(cr3),
        fpu=FpuState(),
        msrs=boot_msrs(),
    )


def prepare_pvh_boot(memory: GuestMemory, kernel_image: bytes, initrd_image: bytes | None,
                     cmdline: str, rsdp_address: int = 0) -> BootState:
    """Load an ELF kernel at its physical addresses; start it at its PVH entry.

    The entry runs in 32-bit protected mode with paging off and EBX pointing at
    ``hvm_start_info`` (the command line, the initrd as module 0, the memory map).
    """
    kernel = load_elf(memory, kernel_image)
    initrd = None
    if initrd_image is not None:
        address = load_initrd(memory, initrd_image, kernel.end_address, 0)
        initrd = (address, len(initrd_image))
    cmdline_address, cmdline_length = write_cmdline(memory, cmdline, PVH_CMDLINE_SIZE,
                                                    layout.CMDLINE_START,
                                                    layout.CMDLINE_MAX_SIZE)
    info = StartInfo(cmdline_address=cmdline_address, rsdp_address=rsdp_address,
                     memmap_address=layout.PVH_MEMMAP_START,
                     memmap=tuple(e820_map(list(memory.ranges()))),
                     modlist_address=layout.PVH_MODLIST_START, initrd=initrd)
    memory.write(layout.PVH_START_INFO_START, info.pack())
    memory.write(layout.PVH_MODLIST_START, info.pack_modlist())
    memory.write(layout.PVH_MEMMAP_START, info.pack_memmap())
    write_boot_gdt(memory)
    return BootState(
        kernel=kernel,
        initrd=initrd,
        cmdline=(cmdline_address, cmdline_length),
        regs=boot_regs_pvh(kernel.entry_address, layout.PVH_START_INFO_START),
        sregs=boot_sregs_32(),
        fpu=FpuState(),
        msrs=boot_msrs(),
    )
