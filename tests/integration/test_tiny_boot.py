"""Boot the tiny test guests from images/out/tiny and check what they report."""

from __future__ import annotations

import re
import struct
from typing import Callable

import pytest

import pyvmm

from tests.integration.conftest import image, run_pyvmm

Factory = Callable[..., pyvmm.Machine]


def fnv1a32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def checked_initrd(payload: bytes) -> bytes:
    """The initrd format bootcheck verifies: magic, length, payload, FNV-1a."""
    return (b"PYVMMRD1" + struct.pack("<I", len(payload)) + payload
            + struct.pack("<I", fnv1a32(payload)))


def test_bootcheck_sees_what_the_boot_protocol_promised(pyvmm_machine: Factory,
                                                         tmp_path) -> None:
    initrd = tmp_path / "initrd.img"
    data = checked_initrd(bytes(range(256)) * 40)
    initrd.write_bytes(data)
    cmdline = "console=ttyS0 pyvmm.test=bootcheck words with spaces"
    vm = pyvmm_machine(kernel=image("tiny/bootcheck.bzImage"), initrd=initrd, append=cmdline,
                       memory="512M", timeout=60)
    outcome = vm.wait(60)
    out = vm.console.text
    assert outcome.status == 0, outcome.reason + out
    assert "pyvmm-tiny: hello" in out
    assert "check hdrs ok" in out
    assert f"cmdline: {cmdline}" in out
    assert "e820 0 9fc00 1" in out
    assert "e820 9fc00 60400 2" in out
    assert "e820 100000 1ff00000 1" in out
    assert f"size={len(data)} sum={fnv1a32(data):x}" in out
    assert "initrd check ok" in out
    assert "pyvmm-tiny: done" in out


def test_bootcheck_without_initrd() -> None:
    """Through ``pyvmm run``: the default command line and the console on stdout."""
    result = run_pyvmm("run", "--kernel", str(image("tiny/bootcheck.bzImage")),
                       "--timeout", "60")
    assert result.status == 0, result.stderr + result.stdout
    assert "initrd: none" in result.stdout
    assert "cmdline: console=ttyS0 reboot=k" in result.stdout


@pytest.mark.parametrize("code", [0, 1, 5, 100])
def test_guest_exit_code_through_debug_exit_port(pyvmm_machine: Factory, code: int) -> None:
    vm = pyvmm_machine(kernel=image("tiny/exitcode.bzImage"), append=f"exitcode={code}",
                       timeout=60)
    vm.console.expect(f"pyvmm-tiny: exit {code}\n", 60)
    assert vm.wait(60).status == ((code << 1) | 1) & 0xFF


def test_triple_fault_is_a_crash(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/triplefault.bzImage"), timeout=60)
    vm.console.expect("pyvmm-tiny: triple fault", 60)
    outcome = vm.wait(60)
    assert outcome.status == 8
    assert re.search(r"triple-faulted .* on vCPU 0 \(vCPU 0 at RIP 0x[0-9a-f]+\)",
                     outcome.reason), outcome.reason


def test_timeout_exits_124() -> None:
    result = run_pyvmm("run", "--kernel", str(image("tiny/loop.bzImage")),
                       "--timeout", "1.5")
    assert "pyvmm-tiny: looping" in result.stdout
    assert result.status == 124
    assert "timed out after 1.5 s" in result.stderr


def test_piped_stdin_reaches_the_guest() -> None:
    result = run_pyvmm("run", "--kernel", str(image("tiny/echo.bzImage")),
                       "--timeout", "60", stdin=b"hello-from-host q")
    assert result.status == 0, result.stderr
    assert "pyvmm-tiny: echo ready" in result.stdout
    assert "hello-from-host" in result.stdout
    assert "pyvmm-tiny: bye" in result.stdout


def test_console_write_reaches_the_guest(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/echo.bzImage"), timeout=60)
    vm.console.expect("pyvmm-tiny: echo ready", 60)
    vm.console.write(b"hello-from-python ")
    vm.console.expect("hello-from-python", 60)
    vm.console.write(b"q")
    vm.console.expect("pyvmm-tiny: bye", 60)
    assert vm.wait(60).status == 0
