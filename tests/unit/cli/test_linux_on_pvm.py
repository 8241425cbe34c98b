"""On a kvm_pvm host, ``pyvmm run`` refuses a Linux kernel at once, in one line.

The host is faked (``is_pvm_host``) and ``/dev/kvm`` pointed at a path that
does not exist: a run that gets past the refusal reaches KVM and says the
device is missing, so each test tells which of the two happened.
"""

from __future__ import annotations

import struct
import time

import pytest
from click.testing import CliRunner

from pyvmm.cli.main import main
from pyvmm.loader.identify import is_linux
from tests.unit.bzimages import make_bzimage
from tests.unit.loader.elfs import make_elf, pvh_note


def linux_bzimage() -> bytes:
    """A bzImage whose setup header names a release, as Linux's does."""
    image = bytearray(make_bzimage())
    struct.pack_into("<H", image, 0x20E, 0x100)  # kernel_version at 0x200 + 0x100
    image[0x300:0x330] = b"6.1.0-57-amd64 (debian-kernel@lists) #1 SMP\0".ljust(0x30, b"\0")
    return bytes(image)


def linux_vmlinux() -> bytes:
    text = b"\x90" * 64 + b"Linux version 6.1.0 (gcc) #1 SMP\n\0"
    return make_elf([(0x1000000, text, 0x1000)], pvh_note(0x1000000))


@pytest.fixture
def pvm_host(monkeypatch, tmp_path):
    monkeypatch.setattr("pyvmm.kvm.system.is_pvm_host", lambda: True)
    monkeypatch.setenv("PYVMM_KVM_DEVICE", str(tmp_path / "no-kvm"))
    return tmp_path


def run(kernel: bytes, directory, *args: str):
    path = directory / "kernel"
    path.write_bytes(kernel)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "-k", str(path), *args])
    return result, time.monotonic() - started


def test_what_is_linux() -> None:
    assert is_linux(linux_bzimage()) and is_linux(linux_vmlinux())
    assert not is_linux(make_bzimage())                                  # a tiny guest's
    assert not is_linux(make_elf([(0x100000, b"\xf4", 16)], pvh_note(0x100000)))
    assert not is_linux(b"Linux version " + bytes(0x400))                # neither format


@pytest.mark.parametrize("kernel", [linux_bzimage, linux_vmlinux])
def test_linux_on_a_pvm_host_is_refused_at_once_in_one_line(pvm_host, kernel) -> None:
    result, seconds = run(kernel(), pvm_host)
    assert result.exit_code == 4  # the host can't run it
    assert result.output.count("\n") == 1
    line = result.output
    assert line.startswith("pyvmm: error: /dev/kvm here is kvm_pvm")
    assert "can't run its user space" in line
    assert "python3 scripts/rig.py -- pyvmm run" in line and "pyvmm check" in line
    assert "no-kvm" not in line  # refused before /dev/kvm is opened
    assert seconds < 5


def test_a_tiny_guest_gets_past_the_refusal(pvm_host) -> None:
    result, _ = run(make_bzimage(), pvm_host)
    assert "kvm_pvm" not in result.output
    assert "no-kvm does not exist" in result.output and result.exit_code == 4
    assert result.output.rstrip().endswith("(see pyvmm check)")


@pytest.mark.parametrize("experiment", [["--emulation-assist", "on"], ["--cpu", "compat"],
                                        ["--cpu", "host"], ["--emulation-assist", "off"]])
def test_choosing_cpu_or_emulation_assist_boots_linux_anyway(pvm_host, experiment) -> None:
    result, _ = run(linux_bzimage(), pvm_host, *experiment)
    assert "kvm_pvm" not in result.output
    assert "no-kvm does not exist" in result.output


def test_hardware_kvm_boots_linux(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr("pyvmm.kvm.system.is_pvm_host", lambda: False)
    monkeypatch.setenv("PYVMM_KVM_DEVICE", str(tmp_path / "no-kvm"))
    result, _ = run(linux_bzimage(), tmp_path)
    assert "no-kvm does not exist" in result.output
