"""--stats bookkeeping: exit keys, merging per-vCPU counters, the reports."""

from __future__ import annotations

import json

from pyvmm.kvm.exits import Hlt, IoIn, IoOut, MmioRead, MmioWrite
from pyvmm.vcpu.stats import RunStats, exit_key, process_age


def test_exit_keys_name_the_port_or_address() -> None:
    data = memoryview(bytearray(1))
    assert exit_key(IoOut(0x3F8, 1, data)) == ("pio-out", 0x3F8)
    assert exit_key(IoIn(0x3FD, 1, data)) == ("pio-in", 0x3FD)
    assert exit_key(MmioWrite(0xD000_0050, data)) == ("mmio-write", 0xD000_0050)
    assert exit_key(MmioRead(0xD000_0000, data)) == ("mmio-read", 0xD000_0000)
    assert exit_key(Hlt()) == ("hlt", None)


def test_counters_of_all_vcpus_are_merged() -> None:
    stats = RunStats()
    first, second = stats.counter(), stats.counter()
    first.add(("pio-out", 0x3F8), 3000)
    first.add(("pio-out", 0x3F8), 5000)
    second.add(("pio-out", 0x3F8), 1000)
    second.add(("pio-in", 0x3FD), 2000)
    second.in_kvm_ns = 1_500_000_000
    data = stats.as_dict()
    assert data["exits"] == 4
    assert data["in_kvm_run_s"] == 1.5
    assert data["by_kind"]["pio-out"] == {"count": 3, "total_us": 9.0, "mean_us": 3.0}
    assert data["by_address"][0] == {"kind": "pio-out", "address": 0x3F8, "count": 3,
                                     "total_us": 9.0, "mean_us": 3.0}
    assert json.loads(stats.json_line())["pyvmm_stats"] == data
    text = stats.text()
    assert "4 exits" in text and "0x3f8" in text and "0x3fd" in text


def test_startup_is_measured_from_spawn() -> None:
    age = process_age()
    assert 0 < age < 3600  # this test process started a moment ago
    stats = RunStats()
    stats.mark("cli_parsed")
    stats.note_first_run()
    stats.note_first_run()  # only the first vCPU's counts
    startup = stats.as_dict()["startup_s"]
    assert 0 < startup["cli_parsed"] <= startup["first_kvm_run"]


def test_devices_counts_are_read_when_the_report_is_made() -> None:
    counts = {"rx_frames": 0}
    stats = RunStats()
    stats.device_counts["net0"] = lambda: dict(counts)
    counts["rx_frames"] = 7  # moved after registration: the report reads them late
    data = json.loads(stats.json_line())
    assert next(iter(data.values()))["devices"] == {"net0": {"rx_frames": 7}}


def test_the_text_report_names_each_devices_counts() -> None:
    stats = RunStats()
    stats.device_counts["virtio"] = lambda: {"irq-line-fallbacks": 2}
    assert stats.text().splitlines()[-1] == "pyvmm stats: virtio: irq-line-fallbacks 2"
