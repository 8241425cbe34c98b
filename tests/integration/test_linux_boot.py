"""The minimal Linux kernel on a kvm_pvm host: what only such a host can show.

Linux's success (user space, drivers, every exit path) is asserted in
tests/linux/, on hardware KVM (the rig).  On a kvm_pvm host every guest
instruction is emulated: pyvmm finishes the ``int3``/``fwait`` the emulator gives up on
(--emulation-assist), ``clearcpuid=`` keeps the kernel off POPCNT/SMAP/SMEP,
and the kernel then runs all of its start-up, drivers included, up to the
first system call of ``/init``, which the emulator gets wrong; the kernel
panics and says so through pvpanic.
"""

from __future__ import annotations

import pytest

from pyvmm.exitstatus import ExitStatus
from pyvmm.kvm.system import is_pvm_host
from tests.disk_images import partitioned_disk

from .conftest import image, run_pyvmm

pytestmark = pytest.mark.skipif(not is_pvm_host(), reason="kvm_pvm only: tests/linux covers "
                                "Linux on hardware KVM")

#: What keeps a stock kernel off the instructions kvm_pvm's emulator can't run.
PVM_ARGS = "noxsave clearcpuid=popcnt,smap,smep"


def test_bzimage_without_help_stops_with_an_explained_failure() -> None:
    """Without clearcpuid the kernel patches in popcnt, which the emulator can't run."""
    kernel = image("linux/bzImage")
    cmdline = "console=ttyS0 reboot=k panic=-1 noxsave pyvmm.run=echo,from-the-guest"
    result = run_pyvmm("run", "--kernel", str(kernel), "--initrd",
                       str(image("initramfs.cpio.gz")), "--append", cmdline,
                       "--emulation-assist", "on", "--timeout", "240", timeout=300)
    assert "Linux version 6.1" in result.stdout
    assert f"Command line: {cmdline}" in result.stdout
    assert "BIOS-e820" in result.stdout
    assert "RAMDISK:" in result.stdout  # the kernel found the initrd we placed
    assert result.status == ExitStatus.KVM_FAILURE, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "emulation failure" in message and "RIP 0x" in message
    assert "kvm_pvm" in message and "emulation assists: 1 int3" in message


def test_linux_drives_our_devices_as_far_as_the_host_allows(tmp_path) -> None:
    """With the emulation assist, all of Linux's start-up runs under kvm_pvm: ACPI,
    virtio-blk reading a partition table, hvc0, up to init's first system call."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(partitioned_disk([(2048, 2048), (4096, 2048)], size=4 << 20))
    dump = tmp_path / "linux.core"
    cmdline = f"console=ttyS0 console=hvc0 {PVM_ARGS} pyvmm.run=echo,from-the-guest"
    result = run_pyvmm("run", "--kernel", str(image("linux/vmlinux")),
                       "--initrd", str(image("initramfs.cpio.gz")),
                       "--drive", f"path={disk},serial=linux-disk",
                       "--virtio-announce", "acpi", "--append", cmdline,
                       "--dump", str(dump), "--emulation-assist", "on", "--timeout", "400",
                       timeout=480)
    out = result.stdout
    assert "ACPI: 1 ACPI AML tables successfully acquired and loaded" in out
    assert "ACPI: PM: (supports S0 S5)" in out
    assert "[vda] 8192 512-byte logical blocks" in out    # capacity from our config
    assert "vda: vda1 vda2" in out                        # the driver read sector 0
    assert out.count("Run /init as init process") == 2    # on ttyS0 and on hvc0
    assert "Kernel panic" in out
    assert result.status == ExitStatus.GUEST_PANIC, result.stderr
    assert "pvpanic" in result.stderr
    log = run_pyvmm("inspect", "dmesg", str(dump), "--system-map",
                    str(image("linux/System.map")))
    assert "Kernel panic - not syncing" in log.stdout
