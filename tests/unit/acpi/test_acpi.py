"""AML encodings against hand-worked bytes, table layouts and checksums, iasl round trip."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from pyvmm.acpi import aml
from pyvmm.acpi.tables import (FADT_LENGTH, AcpiPlatform, VirtioWindow, build_tables, fadt_offset,
                               write_acpi_tables)
from pyvmm.memory import GuestMemory


@pytest.mark.parametrize("payload, encoded", [
    (0, b"\x01"), (62, b"\x3f"),                      # one byte up to 63 in all
    (63, b"\x41\x04"), (4093, b"\x4f\xff"),           # two bytes up to 4095
    (4094, b"\x81\x00\x01"),                          # three bytes: 4097 in all
    ((1 << 20) - 4, b"\x8f\xff\xff"),                 # the largest three-byte length
    ((1 << 20) - 3, b"\xc1\x00\x00\x01"),             # four bytes: 1 MiB + 1
])
def test_pkg_length_boundaries(payload: int, encoded: bytes) -> None:
    assert aml.pkg_length(payload) == encoded


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (1, b"\x01"), (5, b"\x0a\x05"), (0x1234, b"\x0b\x34\x12"),
    (0xD0000000, b"\x0c\x00\x00\x00\xd0"), (1 << 40, b"\x0e" + (1 << 40).to_bytes(8, "little")),
])
def test_integers(value: int, encoded: bytes) -> None:
    assert aml.integer(value) == encoded


def test_names_and_strings() -> None:
    assert aml.name_string("COM1") == b"COM1"
    assert aml.name_string("_SB") == b"_SB_"
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("\\A.B.C") == b"\\\x2f\x03A___B___C___"
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    assert aml.name("_UID", 0) == b"\x08_UID\x00"


def test_eisa_id_of_a_16550() -> None:
    assert aml.eisa_id("PNP0501") == b"\x0c" + (0x0105D041).to_bytes(4, "little")


def test_resource_descriptors() -> None:
    assert aml.io_port(0x3F8, 8) == bytes([0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8])
    assert aml.irq_no_flags(4) == bytes([0x22, 0x10, 0x00])
    assert aml.memory32_fixed(0xD0000000, 0x200) == \
        bytes([0x86, 9, 0, 1]) + struct.pack("<II", 0xD0000000, 0x200)
    assert aml.interrupt(5) == bytes([0x89, 6, 0, 0x03, 1, 5, 0, 0, 0])
    # Buffer: PkgLength 8 = itself + BufferSize (0A 05) + IRQ (3) + End Tag (2).
    template = aml.resource_template(aml.irq_no_flags(4))
    assert template == bytes([0x11, 0x08, 0x0A, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00])


def test_device_and_method() -> None:
    # PkgLength counts its own byte: DEV0 (4) + Name(_STA, 0x0F) (7) + 1 = 0x0C.
    assert aml.device("DEV0", aml.name("_STA", 0x0F)) == \
        b"\x5b\x82\x0c" + b"DEV0" + b"\x08_STA\x0a\x0f"
    assert aml.method("_STA", 0, False, aml.return_(0x0F)) == \
        b"\x14\x09_STA\x00\xa4\x0a\x0f"


PLATFORM = AcpiPlatform(cpus=4, virtio=(VirtioWindow(0xD0000000, 0x1000, 5),
                                        VirtioWindow(0xD0001000, 0x1000, 6),
                                        VirtioWindow(0xD0002000, 0x1000, 7)))


def test_every_table_sums_to_zero() -> None:
    for name, (_, data) in build_tables(PLATFORM).items():
        if name == "RSDP":
            assert sum(data[:20]) & 0xFF == 0 and sum(data) & 0xFF == 0
        else:
            assert sum(data) & 0xFF == 0, name
            assert struct.unpack_from("<I", data, 4)[0] == len(data)


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_madt_has_one_local_apic_per_cpu(cpus: int) -> None:
    madt = build_tables(AcpiPlatform(cpus=cpus))["APIC"][1]
    offset, apics = 44, []
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        if kind == 0:
            apics.append((madt[offset + 2], madt[offset + 3], madt[offset + 4] & 1))
        offset += length
    assert apics == [(i, i, 1) for i in range(cpus)]


def test_walk_from_rsdp_scan_to_dsdt() -> None:
    """What a guest does: scan the BIOS area for the RSDP, follow the pointers."""
    memory = GuestMemory.from_bytes(1 << 20)
    write_acpi_tables(memory, PLATFORM)
    bios = memory.read(0xE0000, 0x20000)
    rsdp = next(a for a in range(0, len(bios), 16) if bios[a:a + 8] == b"RSD PTR ") + 0xE0000
    xsdt = memory.read_u64(rsdp + 24)
    assert memory.read(xsdt, 4) == b"XSDT"
    entries = [memory.read_u64(xsdt + 36 + 8 * i)
               for i in range((memory.read_u32(xsdt + 4) - 36) // 8)]
    signatures = {memory.read(address, 4): address for address in entries}
    assert set(signatures) == {b"FACP", b"APIC"}
    fadt = signatures[b"FACP"]
    assert memory.read_u32(fadt + fadt_offset("flags")) & (1 << 20)  # HW_REDUCED_ACPI
    dsdt = memory.read_u64(fadt + fadt_offset("x_dsdt"))
    assert memory.read(dsdt, 4) == b"DSDT"
    body = memory.read(dsdt, memory.read_u32(dsdt + 4))
    for needle in (b"LNRO0005", b"QEMU0001", b"_S5_"):
        assert needle in body


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_iasl_disassembles_the_tables(tmp_path) -> None:
    tables = build_tables(PLATFORM)
    for name in ("DSDT", "FACP", "APIC", "XSDT"):
        path = tmp_path / f"{name.lower()}.dat"
        path.write_bytes(tables[name][1])
        proc = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "checksum" not in (proc.stdout + proc.stderr).lower() or \
            "incorrect" not in (proc.stdout + proc.stderr).lower()
    dsl = (tmp_path / "dsdt.dsl").read_text()
    for fragment in ('EisaId ("PNP0501")', '"LNRO0005"', '"QEMU0001"', "_S5_: S5 System State",
                     "0xD0000000", "0xD0001000", "0xD0002000",
                     "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"):
        assert fragment in dsl, fragment
    fadt = (tmp_path / "facp.dsl").read_text()
    assert "Hardware Reduced (V5) : 1" in fadt
    assert "Sleep Control Register" in fadt


def test_fadt_layout_is_the_specs() -> None:
    """Offsets that follow from FADT_FIELDS are ACPI 6.5 table 5.9's."""
    assert FADT_LENGTH == 276
    assert [fadt_offset(name) for name in ("dsdt", "iapc_boot_arch", "flags", "reset_reg",
                                           "fadt_minor_version", "x_dsdt",
                                           "sleep_control_reg", "hypervisor_vendor_identity")] \
        == [40, 109, 112, 116, 131, 140, 244, 268]
