"""The platform pyvmm gives a guest: ACPI tables, SMP, poweroff, panic, PVH, restart."""

from __future__ import annotations

import re
from typing import Callable

import pytest

import pyvmm
from pyvmm.exitstatus import ExitStatus
from pyvmm.kvm.system import is_pvm_host

from .conftest import image, run_pyvmm

#: Most tests here boot through the library (the pyvmm_machine fixture); what only
#: the command line does (--on-reboot restart) runs ``pyvmm run``.
Factory = Callable[..., pyvmm.Machine]


@pytest.mark.parametrize("cpus", [1, 4])
def test_every_vcpu_starts_and_reports_its_apic_id(pyvmm_machine: Factory, cpus: int) -> None:
    vm = pyvmm_machine(kernel=image("tiny/smp.bzImage"), cpus=cpus, timeout=60)
    outcome = vm.wait(60)
    assert outcome.status == ExitStatus.OK, vm.console.text + outcome.reason
    assert f"smp: {cpus} cpus up" in vm.console.text
    assert sorted(int(i) for i in re.findall(r"smp: cpu (\d+) up", vm.console.text)) == \
        list(range(1, cpus))


def test_guest_walks_the_acpi_tables(pyvmm_machine: Factory, tmp_path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    vm = pyvmm_machine(kernel=image("tiny/acpi.bzImage"), cpus=2, drives=[disk],
                       append="console=ttyS0 acpitest=walk", timeout=60)
    # Two virtio devices: the disk and the console.
    vm.console.expect("acpi: ok cpus=2 virtio=2 pvpanic=0x505 sleep=0x3c0", 60)
    assert vm.wait(60).status == ExitStatus.OK


def test_virtio_devices_only_on_the_command_line_when_asked(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/acpi.bzImage"), virtio_announce="cmdline",
                       append="console=ttyS0 acpitest=walk", timeout=60)
    vm.console.expect("virtio=0", 60)


def test_acpi_poweroff_exits_zero(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/acpi.bzImage"), append="console=ttyS0 acpitest=poweroff",
                       timeout=60)
    outcome = vm.wait(60)
    assert (outcome.status, outcome.kind) == (ExitStatus.OK, "poweroff")
    assert "ACPI S5" in outcome.reason
    assert "acpi: powering off" in vm.console.text


def test_pvpanic_gives_the_panic_status(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/acpi.bzImage"), append="console=ttyS0 acpitest=panic",
                       timeout=60)
    outcome = vm.wait(60)
    assert outcome.status == ExitStatus.GUEST_PANIC
    assert "panicked (pvpanic)" in outcome.reason


def test_no_acpi_means_no_tables(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/acpi.bzImage"), acpi=False,
                       append="console=ttyS0 acpitest=walk", timeout=60)
    vm.console.expect("acpi: FAIL no RSDP", 60)
    assert vm.wait(60).status == 3  # the guest's FAIL: debug-exit 1


def test_on_reboot_restart_runs_the_guest_again_within_the_timeout() -> None:
    result = run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")),
                       "--on-reboot", "restart", "--timeout", "3")
    assert result.status == ExitStatus.TIMEOUT
    assert result.stdout.count("pyvmm-tiny: hello") >= 2
    assert "restarting" in result.stderr


def test_tiny_guest_as_pvh_elf() -> None:
    result = run_pyvmm("run", "-k", str(image("tiny/smp.elf")), "--cpus", "2",
                       "--timeout", "60")
    assert result.status == ExitStatus.OK and "smp: 2 cpus up" in result.stdout


def test_minimal_linux_as_elf_through_pvh() -> None:
    vmlinux = image("linux/vmlinux")
    cmdline = "console=ttyS0 noxsave panic=-1"
    result = run_pyvmm("run", "-k", str(vmlinux), "-i", str(image("initramfs.cpio.gz")),
                       "--cpus", "2", "-a", cmdline, "--timeout", "240", timeout=300)
    assert "Linux version 6.1" in result.stdout
    assert "ACPI: RSDP 0x00000000000E0000" in result.stdout   # found our tables
    assert "smpboot: Allowing 2 CPUs" in result.stdout        # from our MADT
    assert "RAMDISK:" in result.stdout                        # the PVH initrd module
    if is_pvm_host():
        assert result.status == ExitStatus.KVM_FAILURE
        assert "emulation failure" in result.stderr
    else:
        assert result.status == ExitStatus.OK


def test_the_rtc_tells_the_hosts_time_and_updates_each_second(pyvmm_machine: Factory) -> None:
    import calendar
    import time

    before = time.time()
    vm = pyvmm_machine(kernel=image("tiny/rtc.bzImage"), timeout=60)
    outcome = vm.wait(60)
    after = time.time()
    assert outcome.status == ExitStatus.OK, vm.console.text + outcome.reason
    found = re.search(r"rtc: (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)", vm.console.text)
    assert found, vm.console.text
    shown = calendar.timegm(tuple(int(part) for part in found.groups()) + (0, 0, 0))
    assert int(before) - 1 <= shown <= after
    assert "rtc: updates 2 periodic 1" in vm.console.text
