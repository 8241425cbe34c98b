"""The library API (pyvmm.Machine) on the tiny guests, through the pyvmm_machine fixture."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable

import pytest

import pyvmm
from pyvmm.errors import HostError, PyvmmError
from pyvmm.kvm.system import is_pvm_host
from tests.conftest import plugin_autoloaded
from tests.integration.conftest import image, run_pyvmm

Factory = Callable[..., pyvmm.Machine]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def vm_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith(("vcpu", "pyvmm")))


@pytest.mark.parametrize("code", [0, 5])
def test_outcome_status_is_the_status_the_cli_reports(pyvmm_machine: Factory, code: int) -> None:
    kernel = image("tiny/exitcode.bzImage")
    vm = pyvmm_machine(kernel=kernel, append=f"exitcode={code}", timeout=60)
    outcome = vm.wait(60)
    cli = run_pyvmm("run", "-k", str(kernel), "-a", f"exitcode={code}", "-t", "60")
    assert outcome.status == cli.status == (code << 1) | 1
    assert outcome.kind == "debug-exit"
    assert outcome.reason in cli.stderr
    assert f"pyvmm-tiny: exit {code}" in vm.console.text


def test_timeout_and_triple_fault_outcomes(pyvmm_machine: Factory) -> None:
    looping = pyvmm_machine(kernel=image("tiny/loop.bzImage"), timeout=1)
    crashing = pyvmm_machine(kernel=image("tiny/triplefault.bzImage"), timeout=60)
    assert (crashing.wait(60).status, crashing.wait().kind) == (8, "triple-fault")
    outcome = looping.wait(60)
    assert (outcome.status, outcome.kind) == (124, "timeout")
    assert outcome.reason.startswith("timed out after 1 s")


def test_with_stops_and_cleans_up_even_on_an_exception() -> None:
    pyvmm.Machine(kernel=image("tiny/loop.bzImage")).stop()  # the first build's one-time imports
    fds, threads = fd_count(), vm_threads()
    with pytest.raises(RuntimeError, match="the test failed"):
        with pyvmm.Machine(kernel=image("tiny/loop.bzImage"), memory="64M") as vm:
            vm.console.expect("looping", 30)
            assert vm.running
            raise RuntimeError("the test failed")
    assert not vm.running
    assert vm_threads() == threads
    assert fd_count() == fds
    assert vm.stop().kind == "stop"  # stop is idempotent
    with pytest.raises(RuntimeError, match="released"):
        vm.memory.read(0, 1)


def test_bad_options_raise_and_leak_nothing(tmp_path: Path) -> None:
    fds = fd_count()
    with pytest.raises(PyvmmError):
        pyvmm.Machine(kernel=tmp_path / "missing")
    with pytest.raises(PyvmmError, match="unknown keyword argument memroy="):
        pyvmm.Machine(kernel=image("tiny/loop.bzImage"), memroy="1G")
    with pytest.raises(PyvmmError, match="memory"):
        pyvmm.Machine(kernel=image("tiny/loop.bzImage"), memory="12X")
    assert fd_count() == fds


def test_two_machines_at_once(pyvmm_machine: Factory) -> None:
    looping = pyvmm_machine(kernel=image("tiny/loop.bzImage"), memory="64M")
    echoing = pyvmm_machine(kernel=image("tiny/echo.bzImage"), memory="64M")
    looping.console.expect("looping", 30)
    echoing.console.expect("echo ready", 30)
    echoing.console.write("from-the-api q")
    assert echoing.wait(30).status == 0
    assert "from-the-api" in echoing.console.text
    assert looping.running
    assert looping.stop().kind == "stop"


def test_expect_on_the_serial_console(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/bootcheck.bzImage"), append="console=ttyS0 word=42")
    match = vm.console.expect(r"word=(\d+)", 30)
    assert match.group(1) == "42"
    assert vm.console.expect(rb"e820 (\w+) (\w+) 1", 30).group(1) == b"0"  # bytes, past the last
    vm.console.expect("pyvmm-tiny: done", 30)
    assert vm.wait(30).status == 0


def test_expect_and_write_on_the_virtio_console(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/vcon.bzImage"), append="console=hvc0 contest=echo")
    vm.console.expect("vcon: hello from hvc0", 30)
    vm.console.write("typed from python\n")
    vm.console.expect("vcon: got typed from python", 30)
    assert vm.wait(30).status == 0


def test_expect_times_out(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/loop.bzImage"), memory="64M")
    with pytest.raises(TimeoutError, match="never printed"):
        vm.console.expect("never printed", 0.5)
    assert vm.running


def test_expect_after_the_guest_stopped_says_so(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image("tiny/exitcode.bzImage"), append="exitcode=1")
    vm.wait(30)
    with pytest.raises(EOFError, match="debug-exit"):
        vm.console.expect("never printed", 5)


def test_memory_registers_and_a_live_dump(pyvmm_machine: Factory, tmp_path: Path) -> None:
    kernel = image("tiny/loop.bzImage")
    vm = pyvmm_machine(kernel=kernel, memory="64M")
    vm.console.expect("looping", 30)
    # The bzImage's protected-mode payload is loaded at 1 MiB, as the boot protocol says.
    data = kernel.read_bytes()
    payload = ((data[0x1F1] or 4) + 1) * 512
    assert vm.memory.read(0x100000, 64) == data[payload:payload + 64]
    regs = vm.registers(0)
    assert regs.regs["rip"] >= 0x100000
    assert regs.control["cr0"] & 0x80000001 == 0x80000001  # protected mode, paging
    with pytest.raises(IndexError):
        vm.registers(1)
    dump = tmp_path / "live.core"
    vm.dump(dump)
    assert vm.running  # the guest ran on after the dump
    inspected = run_pyvmm("inspect", "regs", str(dump), "--json")
    assert inspected.status == 0, inspected.stderr
    assert json.loads(inspected.stdout)["rip"] >= 0x100000


def test_dump_after_the_guest_stopped(pyvmm_machine: Factory, tmp_path: Path) -> None:
    vm = pyvmm_machine(kernel=image("tiny/exitcode.bzImage"), append="exitcode=2")
    assert vm.wait(30).status == 5
    dump = tmp_path / "stopped.core"
    vm.dump(dump)
    summary = run_pyvmm("inspect", "summary", str(dump), "--json")
    assert summary.status == 0, summary.stderr
    assert "debug-exit" in summary.stdout


def test_a_machine_started_from_another_thread(pyvmm_machine: Factory) -> None:
    made: list[pyvmm.Machine] = []
    worker = threading.Thread(target=lambda: made.append(
        pyvmm_machine(kernel=image("tiny/exitcode.bzImage"), append="exitcode=3")))
    worker.start()
    worker.join(60)
    assert made[0].wait(30).status == 7


def test_a_failing_test_report_carries_the_console(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(f"""
        def test_fails(pyvmm_machine):
            vm = pyvmm_machine(kernel={str(image("tiny/bootcheck.bzImage"))!r})
            vm.wait(30)
            assert False, "on purpose"
    """)
    plugin = [] if plugin_autoloaded() else ["-p", "pyvmm.pytest_plugin"]
    result = pytester.runpytest_inprocess(*plugin)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pyvmm console 0: bootcheck.bzImage*", "*pyvmm-tiny: hello*"])


@pytest.mark.skipif(not is_pvm_host(), reason="kvm_pvm only: elsewhere command mode runs")
def test_run_command_says_it_needs_hardware_kvm() -> None:
    with pytest.raises(HostError, match="command mode needs hardware KVM"):
        pyvmm.run_command(["true"], kernel=image("tiny/loop.bzImage"))


def test_a_tiny_guest_boots_on_a_pvm_host_and_linux_is_refused(pyvmm_machine: Factory,
                                                                 monkeypatch) -> None:
    """The refusal of Linux on kvm_pvm (tests/unit/cli/test_linux_on_pvm.py) spares tiny guests."""
    monkeypatch.setattr("pyvmm.kvm.system.is_pvm_host", lambda: True)
    vm = pyvmm_machine(kernel=image("tiny/exitcode.bzImage"), append="exitcode=0", timeout=60)
    assert vm.wait(60).status == 1 and "pyvmm-tiny: exit 0" in vm.console.text
    with pytest.raises(HostError, match="kvm_pvm .* can't run its user space"):
        pyvmm.Machine(kernel=image("linux/bzImage"))
