"""The minimal Linux kernel from images/ booted under pyvmm, as far as the host allows.

On hardware KVM it reaches the initramfs ``/init``, runs the command we pass
and powers off (exit 0).  On a kvm_pvm host every guest instruction is
emulated and the kernel stops at its alternatives self-test (an ``int3`` the
emulator can't run): then what is proven is the banner and early log on the
serial console and a clean, explained exit with status 10.
"""

from __future__ import annotations

from pyvmm.exitstatus import ExitStatus
from pyvmm.kvm.system import is_pvm_host

from .conftest import image, run_pyvmm


def test_minimal_linux_boots_as_far_as_the_host_allows() -> None:
    kernel = image("linux/bzImage")
    initramfs = image("initramfs.cpio.gz")
    cmdline = "console=ttyS0 reboot=k panic=-1 noxsave pyvmm.run=echo,from-the-guest"
    result = run_pyvmm("run", "--kernel", str(kernel), "--initrd", str(initramfs),
                       "--append", cmdline, "--timeout", "240", timeout=300)
    assert "Linux version 6.1" in result.stdout
    assert f"Command line: {cmdline}" in result.stdout
    assert "BIOS-e820" in result.stdout
    assert "RAMDISK:" in result.stdout  # the kernel found the initrd we placed
    if is_pvm_host():
        assert result.status == ExitStatus.KVM_FAILURE, result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert "emulation failure" in message and "RIP 0x" in message
        assert "kvm_pvm" in message
    else:
        assert "pyvmm-init: ok" in result.stdout
        assert "from-the-guest" in result.stdout
        assert result.status == ExitStatus.OK, result.stderr
