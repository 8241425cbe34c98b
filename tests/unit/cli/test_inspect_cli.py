"""'pyvmm inspect' in-process over a synthetic dump with known memory and page tables."""

from __future__ import annotations

import json

import pytest

from pyvmm.dump.core import write_core
from pyvmm.dump.state import VcpuRegisters
from pyvmm.memory import GuestMemory
from tests.unit.cli.conftest import invoke

CR3, VIRT, PHYS = 0x10000, 0xFFFF800000005000, 0x200000


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    memory = GuestMemory.from_bytes(4 << 20)
    pml4, pdpt, pd, pt = CR3, CR3 + 0x1000, CR3 + 0x2000, CR3 + 0x3000
    memory.write_u64(pml4 + 8 * 256, pdpt | 3)
    memory.write_u64(pdpt, pd | 3)
    memory.write_u64(pd, pt | 3)
    memory.write_u64(pt + 8 * 5, PHYS | 3)
    memory.write(PHYS, b"hello from the guest\0")
    vcpu = VcpuRegisters(0, {"rip": 0x101234, "rsp": 0x8000},
                     control={"cr0": 0x80000011, "cr3": CR3, "cr4": 0x20})
    path = tmp_path_factory.mktemp("dump") / "guest.core"
    write_core(str(path), memory, [vcpu], {"reason": "the guest triple-faulted",
                                           "kind": "triple-fault", "status": 8})
    return str(path)


def test_summary_json(dump) -> None:
    data = json.loads(invoke("inspect", "summary", dump, "--json").output)
    assert data["ranges"] == [{"start": 0, "size": 4 << 20}]
    assert data["vcpus"][0]["rip"] == 0x101234
    assert data["run"]["status"] == 8


def test_summary_table(dump) -> None:
    result = invoke("inspect", "summary", dump)
    assert result.exit_code == 0 and "triple-faulted" in result.output and "0x0000000000101234" in result.output


def test_regs(dump) -> None:
    data = json.loads(invoke("inspect", "regs", dump, "--json").output)
    assert data["rip"] == 0x101234 and data["cr3"] == CR3
    assert invoke("inspect", "regs", dump, "--cpu", "3").exit_code == 2


def test_mem_physical_and_virtual(dump) -> None:
    physical = json.loads(invoke("inspect", "mem", dump, hex(PHYS), "20", "--json").output)
    assert bytes.fromhex(physical["hex"]) == b"hello from the guest"
    virtual = json.loads(invoke("inspect", "mem", dump, hex(VIRT), "20", "--virt",
                                "--json").output)
    assert virtual["physical"] == PHYS and virtual["page_size"] == 4096
    assert [s["level"] for s in virtual["walk"]] == ["PML4", "PDPT", "PD", "PT"]
    assert bytes.fromhex(virtual["hex"]) == b"hello from the guest"
    text = invoke("inspect", "mem", dump, hex(VIRT), "32", "--virt").output
    assert "hello from the g" in text and "PT entry" in text


@pytest.mark.parametrize("args, message", [
    (["mem", "{dump}", "0x10000000"], "not in the dump's RAM"),
    (["mem", "{dump}", "0x8000000000000000", "--virt"], "not a canonical"),
    (["mem", "{dump}", "0xffff800000006000", "--virt"], "not present"),
    (["mem", "{dump}", "zzz"], "not an address"),
    (["dmesg", "{dump}"], "needs the guest's symbols"),
])
def test_errors_are_one_line(dump, args, message) -> None:
    result = invoke("inspect", *[a.format(dump=dump) for a in args])
    assert result.exit_code == 2
    assert message in result.output.strip().splitlines()[-1]


def test_search_and_strings(dump) -> None:
    assert json.loads(invoke("inspect", "search", dump, "from the",
                             "--json").output)["hits"] == [PHYS + 6]
    assert json.loads(invoke("inspect", "search", dump, "0x68656c6c6f",
                             "--json").output)["hits"] == [PHYS]
    found = json.loads(invoke("inspect", "strings", dump, "--json").output)
    assert {"address": PHYS, "text": "hello from the guest"} in found


def test_not_a_dump(tmp_path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"plain text")
    result = invoke("inspect", "summary", str(path))
    assert result.exit_code == 2 and "not an ELF file" in result.output


def test_strings_and_search_stop_at_max(dump) -> None:
    assert len(json.loads(invoke("inspect", "strings", dump, "--min", "4", "--max", "1",
                                 "--json").output)) == 1
    assert len(json.loads(invoke("inspect", "search", dump, "e", "--max", "2",
                                 "--json").output)["hits"]) == 2


@pytest.mark.parametrize("offset, value", [(32, (1 << 63).to_bytes(8, "little")),
                                           (56, b"\xff\xff")], ids=["phoff-2^63", "phnum-0xffff"])
def test_a_crafted_core_is_one_line_and_status_2(tmp_path, dump, offset: int,
                                                 value: bytes) -> None:
    data = bytearray(open(dump, "rb").read())
    data[offset:offset + len(value)] = value
    path = tmp_path / "crafted.core"
    path.write_bytes(bytes(data))
    result = invoke("inspect", "summary", str(path))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1
    assert "truncated or corrupt" in result.output


@pytest.mark.parametrize("command", ["search", "strings"])
@pytest.mark.parametrize("maximum", ["-1", "0"])
def test_max_must_be_positive(dump, command: str, maximum: str) -> None:
    args = ["inspect", command, dump] + (["e"] if command == "search" else []) + ["--max", maximum]
    result = invoke(*args)
    assert result.exit_code == 2
    assert "--max" in result.output and "x>=1" in result.output
