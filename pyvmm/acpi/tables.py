"""The ACPI tables of a hardware-reduced x86 micro-VM, written into guest RAM.

As QEMU ``-M microvm``, Firecracker and Cloud Hypervisor do, pyvmm describes
its platform through ACPI so stock kernels (which may lack MP-table parsing
and ``virtio_mmio.device=`` support) find the CPUs, the UART, the virtio-mmio
devices, the pvpanic port and how to power off:

    RSDP (in the BIOS area Linux scans) -> XSDT -> FADT -> DSDT (AML)
                                                -> MADT

The FADT declares HW_REDUCED_ACPI: no PM1 blocks, no SCI; poweroff is a
write to the sleep control register (``SLP_TYP`` 5, matching ``\\_S5_``),
reset a write of 0xFE to the i8042 command port.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.acpi import aml
from pyvmm.arch.x86_64 import layout
from pyvmm.devices.platform import S5_SLP_TYP
from pyvmm.devices.rtc import CENTURY
from pyvmm.memory import GuestMemory

OEM_ID = b"PYVMM "
OEM_TABLE_ID = b"PYVMMACP"
CREATOR_ID = b"PYVM"
HEADER = struct.Struct("<4sIBB6s8sI4sI")
#: Bytes the tables may use from the RSDP up (the BIOS area ends at 1 MiB).
AREA_SIZE = layout.HIMEM_START - layout.RSDP_START

FADT_REVISION = 6
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20
IAPC_VGA_NOT_PRESENT = 1 << 2
GAS_SYSTEM_IO = 1
MADT_PCAT_COMPAT = 1

#: The FADT after its header (ACPI 6.5, table 5.9): every field, in order, with its
#: struct format; each offset (the comment) follows from those before it, so the
#: layout is stated once.  Fields pyvmm leaves zero are listed for their place.
FADT_FIELDS: tuple[tuple[str, str], ...] = (
    ("firmware_ctrl", "I"),                   # 36
    ("dsdt", "I"),                            # 40
    ("reserved_int_model", "B"),              # 44
    ("preferred_pm_profile", "B"),            # 45
    ("sci_int", "H"),                         # 46
    ("smi_cmd", "I"),                         # 48
    ("acpi_enable", "B"),                     # 52
    ("acpi_disable", "B"),                    # 53
    ("s4bios_req", "B"),                      # 54
    ("pstate_cnt", "B"),                      # 55
    ("pm1a_evt_blk", "I"),                    # 56
    ("pm1b_evt_blk", "I"),                    # 60
    ("pm1a_cnt_blk", "I"),                    # 64
    ("pm1b_cnt_blk", "I"),                    # 68
    ("pm2_cnt_blk", "I"),                     # 72
    ("pm_tmr_blk", "I"),                      # 76
    ("gpe0_blk", "I"),                        # 80
    ("gpe1_blk", "I"),                        # 84
    ("pm1_evt_len", "B"),                     # 88
    ("pm1_cnt_len", "B"),                     # 89
    ("pm2_cnt_len", "B"),                     # 90
    ("pm_tmr_len", "B"),                      # 91
    ("gpe0_blk_len", "B"),                    # 92
    ("gpe1_blk_len", "B"),                    # 93
    ("gpe1_base", "B"),                       # 94
    ("cst_cnt", "B"),                         # 95
    ("p_lvl2_lat", "H"),                      # 96
    ("p_lvl3_lat", "H"),                      # 98
    ("flush_size", "H"),                      # 100
    ("flush_stride", "H"),                    # 102
    ("duty_offset", "B"),                     # 104
    ("duty_width", "B"),                      # 105
    ("day_alrm", "B"),                        # 106
    ("mon_alrm", "B"),                        # 107
    ("century", "B"),                         # 108
    ("iapc_boot_arch", "H"),                  # 109
    ("reserved", "B"),                        # 111
    ("flags", "I"),                           # 112
    ("reset_reg", "12s"),                     # 116
    ("reset_value", "B"),                     # 128
    ("arm_boot_arch", "H"),                   # 129
    ("fadt_minor_version", "B"),              # 131
    ("x_firmware_ctrl", "Q"),                 # 132
    ("x_dsdt", "Q"),                          # 140
    ("x_pm1a_evt_blk", "12s"),                # 148
    ("x_pm1b_evt_blk", "12s"),                # 160
    ("x_pm1a_cnt_blk", "12s"),                # 172
    ("x_pm1b_cnt_blk", "12s"),                # 184
    ("x_pm2_cnt_blk", "12s"),                 # 196
    ("x_pm_tmr_blk", "12s"),                  # 208
    ("x_gpe0_blk", "12s"),                    # 220
    ("x_gpe1_blk", "12s"),                    # 232
    ("sleep_control_reg", "12s"),             # 244
    ("sleep_status_reg", "12s"),              # 256
    ("hypervisor_vendor_identity", "8s"),     # 268
)
FADT_BODY = struct.Struct("<" + "".join(fmt for _, fmt in FADT_FIELDS))
FADT_LENGTH = HEADER.size + FADT_BODY.size  # 276


@dataclass(frozen=True)
class VirtioWindow:
    base: int
    size: int
    irq: int


@dataclass(frozen=True)
class AcpiPlatform:
    """What the tables describe."""

    cpus: int
    virtio: tuple[VirtioWindow, ...] = ()
    serial_port: int = layout.COM1_PORT
    serial_irq: int = layout.COM1_IRQ
    pvpanic_port: int | None = layout.PVPANIC_PORT
    rtc_port: int = layout.RTC_PORT
    rtc_irq: int = layout.RTC_IRQ
    sleep_control_port: int = layout.ACPI_SLEEP_CONTROL_PORT
    sleep_status_port: int = layout.ACPI_SLEEP_STATUS_PORT
    reset_port: int = layout.I8042_COMMAND_PORT
    reset_value: int = 0xFE
    ioapic_address: int = layout.IOAPIC_START
    lapic_address: int = layout.APIC_START


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero."""
    return (-sum(data)) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: header (with checksum) + body."""
    length = HEADER.size + len(body)
    header = HEADER.pack(signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                         CREATOR_ID, 1)
    raw = bytearray(header + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def gas_io(port: int, width_bits: int = 8) -> bytes:
    """A Generic Address Structure for an I/O port."""
    return struct.pack("<BBBBQ", GAS_SYSTEM_IO, width_bits, 0, 1, port)


def build_dsdt(platform: AcpiPlatform) -> bytes:
    devices = [aml.device(
        "COM1",
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", 0),
        aml.name("_STA", 0x0F),
        aml.name("_CRS", aml.resource_template(aml.io_port(platform.serial_port, 8),
                                               aml.irq_no_flags(platform.serial_irq))))]
    devices.append(aml.device(
        "RTC_",
        aml.name("_HID", aml.eisa_id("PNP0B00")),   # AT real-time clock: Linux's rtc_cmos
        aml.name("_STA", 0x0F),
        aml.name("_CRS", aml.resource_template(aml.io_port(platform.rtc_port, 2),
                                               aml.irq_no_flags(platform.rtc_irq)))))
    for index, slot in enumerate(platform.virtio):
        devices.append(aml.device(
            f"VR{index:02X}",
            aml.name("_HID", "LNRO0005"),   # the virtio-mmio ACPI ID Linux matches
            aml.name("_UID", index),
            aml.name("_CCA", 1),            # cache-coherent DMA
            aml.name("_CRS", aml.resource_template(
                aml.memory32_fixed(slot.base, slot.size),
                # Edge: pyvmm injects virtio interrupts through irqfds, which pulse.
                aml.interrupt(slot.irq, edge=True)))))
    if platform.pvpanic_port is not None:
        devices.append(aml.device(
            "PEVT",
            aml.name("_HID", "QEMU0001"),
            aml.name("_STA", 0x0F),
            aml.name("_CRS", aml.resource_template(aml.io_port(platform.pvpanic_port, 1)))))
    body = aml.scope("\\_SB_", *devices) + \
        aml.name("\\_S5_", aml.package(S5_SLP_TYP, S5_SLP_TYP, 0, 0))
    return table(b"DSDT", 2, body)


def build_madt(platform: AcpiPlatform) -> bytes:
    entries = b""
    for cpu in range(platform.cpus):
        entries += struct.pack("<BBBBI", 0, 8, cpu, cpu, 1)        # local APIC, enabled
    entries += struct.pack("<BBBBII", 1, 12, 0, 0, platform.ioapic_address, 0)  # IOAPIC
    entries += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)           # IRQ0 -> GSI 2
    entries += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)            # NMI on LINT1, all CPUs
    return table(b"APIC", 5, struct.pack("<II", platform.lapic_address, MADT_PCAT_COMPAT)
                 + entries)


def fadt_offset(name: str) -> int:
    """Offset of a FADT field from the start of the table (header included)."""
    names = [field for field, _ in FADT_FIELDS]
    before = "".join(fmt for _, fmt in FADT_FIELDS[:names.index(name)])
    return HEADER.size + struct.calcsize("<" + before)


def build_fadt(platform: AcpiPlatform, dsdt_address: int) -> bytes:
    values: dict[str, int | bytes] = {name: b"" if fmt.endswith("s") else 0
                                      for name, fmt in FADT_FIELDS}
    values.update(
        iapc_boot_arch=IAPC_VGA_NOT_PRESENT,
        century=CENTURY,
        flags=FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP,
        reset_reg=gas_io(platform.reset_port),
        reset_value=platform.reset_value,
        x_dsdt=dsdt_address,
        sleep_control_reg=gas_io(platform.sleep_control_port),
        sleep_status_reg=gas_io(platform.sleep_status_port),
        hypervisor_vendor_identity=b"PYVMM",
    )
    return table(b"FACP", FADT_REVISION, FADT_BODY.pack(*values.values()))


def build_xsdt(addresses: list[int]) -> bytes:
    return table(b"XSDT", 1, struct.pack(f"<{len(addresses)}Q", *addresses))


def build_rsdp(xsdt_address: int) -> bytes:
    raw = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36,
                                xsdt_address, 0))
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


def _align(value: int, alignment: int = 16) -> int:
    return (value + alignment - 1) // alignment * alignment


def build_tables(platform: AcpiPlatform, base: int = layout.RSDP_START) -> dict[str, tuple[int, bytes]]:
    """Every table and where it goes: name -> (guest address, bytes).  Pure."""
    dsdt = build_dsdt(platform)
    madt = build_madt(platform)
    rsdp_at = base
    xsdt_at = _align(rsdp_at + 36)
    fadt_at = _align(xsdt_at + HEADER.size + 16)
    madt_at = _align(fadt_at + FADT_LENGTH)
    dsdt_at = _align(madt_at + len(madt))
    if dsdt_at + len(dsdt) > base + AREA_SIZE:
        raise ValueError("ACPI tables do not fit in the BIOS area")
    return {
        "RSDP": (rsdp_at, build_rsdp(xsdt_at)),
        "XSDT": (xsdt_at, build_xsdt([fadt_at, madt_at])),
        "FACP": (fadt_at, build_fadt(platform, dsdt_at)),
        "APIC": (madt_at, madt),
        "DSDT": (dsdt_at, dsdt),
    }


def write_acpi_tables(memory: GuestMemory, platform: AcpiPlatform,
                      base: int = layout.RSDP_START) -> int:
    """Write the tables into guest RAM; return the RSDP address (for the zero page)."""
    for address, data in build_tables(platform, base).values():
        memory.write(address, data)
    return base
