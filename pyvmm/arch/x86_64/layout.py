"""Where things live in an x86-64 guest's physical address space.

Constants only (and one pure helper that splits RAM around the MMIO hole).
Everything below 1 MiB follows the PC conventions Linux expects; the MMIO hole
below 4 GiB holds the IOAPIC, the local APIC and the virtio-mmio slots.
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PAGE_SIZE = 4 * KIB

# --- Low memory (below 1 MiB) ---------------------------------------------

#: GDT used for the 64-bit entry: null, code64, data, TSS descriptors.
BOOT_GDT_START = 0x500
#: Empty IDT loaded at entry (the kernel installs its own before enabling IRQs).
BOOT_IDT_START = 0x520
#: PVH boot: struct hvm_start_info (EBX at entry), its module list (the
#: initrd) and its memory map, in the page below the zero page.
PVH_START_INFO_START = 0x6000
PVH_MODLIST_START = 0x6040
PVH_MEMMAP_START = 0x6080
#: The "zero page": struct boot_params handed to the kernel in RSI.
ZERO_PAGE_START = 0x7000
#: Initial stack pointer for the boot CPU (grows down, below the page tables).
BOOT_STACK_POINTER = 0x8FF0
#: 4-level page tables identity-mapping the first 4 GiB with 2 MiB pages:
#: one PML4 page, one PDPT page, then four page directories.
PML4_START = 0x9000
PDPT_START = 0xA000
PD_START = 0xB000
#: Number of page directories (each maps 1 GiB with 2 MiB pages).
PD_COUNT = 4
#: Kernel command line, NUL-terminated.
CMDLINE_START = 0x20000
#: Room reserved for the command line (the kernel's own cmdline_size may be smaller).
CMDLINE_MAX_SIZE = 0x10000
#: Start of the Extended BIOS Data Area; RAM from here to 1 MiB is reserved
#: (EBDA, VGA hole, option ROMs, BIOS), as on a PC.
EBDA_START = 0x9FC00
#: Where the ACPI RSDP lives, in the BIOS read-only area Linux scans.
RSDP_START = 0xE0000
#: The 64-bit kernel is loaded here unless its header prefers another address.
HIMEM_START = 0x100000

# --- MMIO hole below 4 GiB ------------------------------------------------

#: RAM stops here and resumes at 4 GiB when the guest has more than this.
MMIO_GAP_START = 0xC000_0000
MMIO_GAP_END = 1 << 32
MMIO_GAP_SIZE = MMIO_GAP_END - MMIO_GAP_START
#: virtio-mmio device windows, one page each, from here upward.
VIRTIO_MMIO_START = 0xD000_0000
VIRTIO_MMIO_SIZE = 0x1000
#: The IOAPIC and the local APIC (fixed by the in-kernel irqchip).
IOAPIC_START = 0xFEC0_0000
APIC_START = 0xFEE0_0000

# --- Legacy I/O ports and IRQ lines ---------------------------------------

#: 16550A UART (COM1) and its ISA interrupt line.
COM1_PORT = 0x3F8
COM1_IRQ = 4
#: i8042 keyboard controller data / command ports (reset = command 0xFE).
I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64
#: The CMOS real-time clock (index and data ports) and its ISA interrupt line.
RTC_PORT = 0x70
RTC_IRQ = 8
#: QEMU isa-debug-exit compatible port: the guest writes a status byte.
DEBUG_EXIT_PORT = 0xF4
#: QEMU pvpanic (ACPI QEMU0001): one port the guest writes when it panics.
PVPANIC_PORT = 0x505
#: ACPI hardware-reduced sleep control and status registers (FADT), one byte
#: each; the same port Cloud Hypervisor uses.
ACPI_SLEEP_CONTROL_PORT = 0x3C0
ACPI_SLEEP_STATUS_PORT = 0x3C1
#: ISA IRQ lines handed out to virtio-mmio devices, one each, in order.  They
#: skip the PIC cascade (2), COM1 (4), the RTC (8), the FPU (13) and the
#: legacy IDE lines, so a kernel with only the 8259 PIC can use them too.
VIRTIO_IRQS = (5, 6, 7, 9, 10, 11, 12, 14, 15)


def ram_ranges(mem_size: int) -> list[tuple[int, int]]:
    """Guest-physical ``(base, size)`` RAM ranges for ``mem_size`` bytes of RAM.

    RAM starts at 0; what does not fit below the MMIO hole continues at 4 GiB.
    """
    if mem_size <= MMIO_GAP_START:
        return [(0, mem_size)]
    return [(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
