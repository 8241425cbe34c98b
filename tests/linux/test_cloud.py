"""Debian's stock cloud kernel: virtio modules from its initramfs, devices through ACPI only,
virtio-console hvc0 as the only console."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyvmm.exitstatus import ExitStatus

from .guests import CLOUD, boot, boot_and_type, pyvmm_args


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_the_guest_sees_every_vcpu(cpus: int) -> None:
    result = boot(pyvmm_args(CLOUD, "nproc; grep -c ^processor /proc/cpuinfo", cpus=cpus))
    assert result.guest_lines() == [str(cpus), str(cpus)]
    assert result.status == ExitStatus.OK, result.stderr


def test_two_disks_the_guest_formats_and_writes_and_the_host_reads(tmp_path: Path) -> None:
    first, second = tmp_path / "a.img", tmp_path / "b.img"
    first.write_bytes(bytes(8 << 20))
    second.write_bytes(bytes(64 << 20))
    run = ("ls -1 /dev/vda /dev/vdb; printf raw-on-vda | dd of=/dev/vda conv=fsync 2>/dev/null; "
           "mke2fs /dev/vdb >/dev/null && mount /dev/vdb /tmp && echo hello-from-vdb > /tmp/hello "
           "&& umount /tmp && echo fs-done")
    result = boot(pyvmm_args(CLOUD, run, cpus=2, drives=(first, second)))
    assert result.guest_lines() == ["/dev/vda", "/dev/vdb", "fs-done"], result.output
    assert result.status == ExitStatus.OK, result.stderr
    assert first.read_bytes().startswith(b"raw-on-vda")
    read = subprocess.run(["debugfs", "-R", "cat /hello", str(second)],
                          capture_output=True, text=True, check=True)
    assert read.stdout == "hello-from-vdb\n"


def test_host_input_reaches_the_shell_on_hvc0() -> None:
    result = boot_and_type(pyvmm_args(CLOUD, "echo type-now; read line; echo got-$line"),
                           prompt=b"type-now", line=b"hello-hvc\n")
    assert "got-hello-hvc" in result.output
    assert result.status == ExitStatus.OK, result.stderr
