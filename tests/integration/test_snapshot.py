"""Snapshot the echo guest at its prompt; clones restored from it, in this process and in a
new one, each answer what is typed into them and end on their own."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import pyvmm
from pyvmm.dump.core import CoreDump
from pyvmm.errors import PyvmmError
from pyvmm.kvm._ffi import address_of
from pyvmm.kvm.state import MSR_IA32_TSC, read_msrs, save_vm
from pyvmm.kvm.system import Kvm
from pyvmm.snapshot import MEMORY_FILE, STATE_FILE, workingset
from pyvmm.snapshot.workingset import own_page_runs
from pyvmm.vmm import spare_vm
from tests.integration.conftest import REPO, image, pyvmm_command, run_pyvmm

Factory = Callable[..., pyvmm.Machine]


@pytest.fixture
def echo_snapshot(pyvmm_machine: Factory, tmp_path: Path) -> Path:
    """The echo guest snapshotted at its prompt, after it echoed "before"; it runs on."""
    vm = pyvmm_machine(kernel=image("tiny/echo.bzImage"), memory="64M")
    vm.console.expect("echo ready", 30)
    vm.console.write("before ")
    vm.console.expect("before ", 30)
    directory = tmp_path / "snap"
    info = vm.snapshot(directory)
    assert info.ram_bytes == 64 << 20 and 0 < info.written_bytes < 1 << 20
    vm.console.write("original q")
    assert vm.wait(30).status == 0
    assert "original" in vm.console.text
    return directory


@pytest.fixture
def restored() -> Iterator[Callable[..., pyvmm.Machine]]:
    machines: list[pyvmm.Machine] = []

    def restore(path: Path, **overrides: object) -> pyvmm.Machine:
        machines.append(pyvmm.Machine.restore(path, **overrides))
        return machines[-1]
    yield restore
    for machine in machines:
        machine.stop()
    spare_vm.discard()  # the spare the last clone's close made: no VM outlives the test


def test_the_snapshot_directory_is_private_and_sparse(echo_snapshot: Path) -> None:
    assert os.stat(echo_snapshot).st_mode & 0o777 == 0o700
    for name in (STATE_FILE, MEMORY_FILE):
        assert os.stat(echo_snapshot / name).st_mode & 0o777 == 0o600
    memory = os.stat(echo_snapshot / MEMORY_FILE)
    assert memory.st_size == 64 << 20 and memory.st_blocks * 512 < 1 << 20


def test_two_clones_in_one_process_answer_and_end_on_their_own(echo_snapshot: Path,
                                                                restored) -> None:
    first, second = restored(echo_snapshot), restored(echo_snapshot, timeout=60)
    first.start()
    second.start()
    first.console.write("one")
    second.console.write("two")
    first.console.expect("one", 30)
    second.console.expect("two", 30)
    first.console.write(" q")
    assert first.wait(30).status == 0          # the guest reset itself: its own exit
    assert first.console.text == "one \npyvmm-tiny: bye\n"
    assert second.running                      # the other clone is untouched by it
    second.console.write(" still here")
    second.console.expect("still here", 30)
    assert second.stop().kind == "stop"
    assert "bye" not in second.console.text


def test_a_clone_in_a_new_process(echo_snapshot: Path) -> None:
    result = run_pyvmm("run", "--restore", str(echo_snapshot), "--timeout", "60",
                       stdin=b"from-another-process q", timeout=90)
    assert result.status == 0, result.stderr
    assert result.stdout == "from-another-process \npyvmm-tiny: bye\n"
    assert "kvm_pvm" not in result.stderr  # the CPUID is the snapshot's: no policy to warn of


def test_a_clone_that_never_ends_times_out_with_124(echo_snapshot: Path) -> None:
    result = run_pyvmm("run", "--restore", str(echo_snapshot), "--timeout", "1",
                       stdin=b"never-ends", timeout=60)
    assert result.status == 124
    assert result.stdout.startswith("never-ends")


def test_a_clone_started_later_than_its_build_reads_the_hosts_time(echo_snapshot: Path,
                                                                   restored) -> None:
    """The clocks a restore sets (TSC, kvmclock) run on with the host's from the build, as
    KVM counts them while no vCPU runs: a clone built ahead (the pytest fixture's next one)
    starts at the host's time, not its build's.  Both read, just before the start, what
    the snapshot saved plus the host's time since it, within 50 ms."""
    body = json.loads((echo_snapshot / STATE_FILE).read_text())["body"]
    saved_tsc = dict(body["vcpus"][0]["msrs"])[MSR_IA32_TSC]
    khz = body["vcpus"][0]["tsc_khz"]
    saved_clock = int.from_bytes(base64.b64decode(body["vm"]["structs"]["clock"])[:8], "little")
    clone = restored(echo_snapshot)
    time.sleep(1.5)                            # built, not started
    machine = clone._machine
    tsc = dict(read_msrs(machine.vcpus[0], [MSR_IA32_TSC])[0])[MSR_IA32_TSC]
    clock = int.from_bytes(save_vm(machine.kvm, machine.vm).structs["clock"][:8], "little")
    since = time.time_ns() - body["host_realtime_ns"]
    assert since > 1.5e9
    assert abs((tsc - saved_tsc) * 1_000_000 / khz - since) < 50e6, (tsc, saved_tsc, since)
    assert abs(clock - saved_clock - since) < 50e6, (clock, saved_clock, since)
    clone.start()
    clone.console.write("later q")
    assert clone.wait(30).status == 0
    assert clone.console.text == "later \npyvmm-tiny: bye\n"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _answers(clone: pyvmm.Machine, word: str) -> None:
    clone.start()
    clone.console.write(f"{word} q")
    assert clone.wait(30).status == 0
    assert clone.console.text == f"{word} \npyvmm-tiny: bye\n"


def test_a_closed_clone_leaves_a_spare_vm_that_the_next_restore_takes(echo_snapshot: Path,
                                                                      restored) -> None:
    spare_vm.discard()
    fds = _open_fds()
    first = restored(echo_snapshot)
    assert not spare_vm.has_spare()
    _answers(first, "first")
    first.stop()
    assert spare_vm.has_spare()                # made when the clone closed
    spare = spare_vm._spare[0][2]
    second = restored(echo_snapshot)
    assert not spare_vm.has_spare() and second._machine.vm is spare.vm
    assert second._machine.vcpus == tuple(spare.vcpus)
    _answers(second, "second")                 # a clone in the spare VM runs as any
    second.stop()
    assert spare_vm.has_spare()
    spare_vm.discard()
    assert not spare_vm.has_spare()
    assert _open_fds() == fds                  # every VM, vCPU and /dev/kvm fd closed


def test_a_boot_neither_takes_nor_leaves_a_spare_vm(echo_snapshot: Path, restored,
                                                    pyvmm_machine: Factory) -> None:
    spare_vm.discard()
    restored(echo_snapshot).stop()
    spare = spare_vm._spare[0][2]
    booted = pyvmm_machine(kernel=image("tiny/echo.bzImage"), memory="64M")
    assert booted._machine.vm is not spare.vm
    booted.stop()
    assert spare_vm._spare[0][2] is spare
    spare_vm.discard()


def test_a_spare_vm_for_another_vcpu_count_or_process_is_closed_not_taken(
        echo_snapshot: Path, restored) -> None:
    spare_vm.discard()
    fds = _open_fds()
    spare_vm.prepare(Kvm.device_path(), 1)
    assert _open_fds() - fds                   # /dev/kvm, the VM, its vCPU
    assert spare_vm.take(Kvm.device_path(), 2) is None
    assert _open_fds() == fds and not spare_vm.has_spare()
    spare_vm.prepare(Kvm.device_path(), 1)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # a forked child: the VM is its parent's (KVM refuses another process)
        taken = spare_vm.take(Kvm.device_path(), 1)
        os.write(writer, b"none" if taken is None else b"taken")
        os._exit(0)
    os.close(writer)
    assert os.read(reader, 16) == b"none"
    os.close(reader)
    os.waitpid(child, 0)
    assert spare_vm.has_spare()                # the parent's is untouched
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # its own spare made: its copies of the parent's closed, not kept
        inherited = _open_fds()
        spare_vm.prepare(Kvm.device_path(), 1)
        ok = spare_vm.has_spare() and len(_open_fds()) == len(inherited)
        os.write(writer, b"closed" if ok else b"kept")
        os._exit(0)
    os.close(writer)
    assert os.read(reader, 16) == b"closed"
    os.close(reader)
    os.waitpid(child, 0)
    assert spare_vm.has_spare()
    _answers(restored(echo_snapshot), "parent")
    spare_vm.discard()


def test_the_pages_the_first_clone_wrote_are_the_next_clones_own_before_it_runs(
        echo_snapshot: Path, restored) -> None:
    workingset.forget()
    saved = (echo_snapshot / MEMORY_FILE).read_bytes()
    first = restored(echo_snapshot)
    ram = first._machine.memory.regions[0]
    assert own_page_runs(address_of(ram.buffer), ram.size) == []  # nothing learned yet
    _answers(first, "first")
    written = own_page_runs(address_of(ram.buffer), ram.size)
    assert written                              # the guest's writes: the clone's own pages
    first.stop()
    second = restored(echo_snapshot)
    ram = second._machine.memory.regions[0]
    assert own_page_runs(address_of(ram.buffer), ram.size) == written  # copied before it ran
    assert second.memory.read(0, ram.size) == saved[:ram.size]          # with the file's data
    _answers(second, "second")
    second.stop()


def test_clones_running_at_once_each_own_only_the_pages_they_wrote(echo_snapshot: Path,
                                                                   restored) -> None:
    """RAM grows by what a clone writes (and the first clone's writes, copied ahead), not
    by its size: the rest stays the memory file's pages, shared by every clone."""
    clones = [restored(echo_snapshot) for _ in range(4)]
    for index, clone in enumerate(clones):
        clone.start()
        clone.console.write(f"clone{index} ")
        clone.console.expect(f"clone{index} ", 30)
    for clone in clones:
        ram = clone._machine.memory.regions[0]
        own = sum(count for _, count in own_page_runs(address_of(ram.buffer), ram.size))
        assert 0 < own <= 64 < ram.size // 4096  # 256 KiB of its 64 MiB: a page or two, here


def test_the_restored_guests_memory_is_the_snapshots(echo_snapshot: Path, restored,
                                                     tmp_path: Path) -> None:
    clone = restored(echo_snapshot)
    core = tmp_path / "clone.core"
    clone.dump(core)                          # before it runs: RAM exactly as restored
    saved = (echo_snapshot / MEMORY_FILE).read_bytes()
    layout = json.loads((echo_snapshot / STATE_FILE).read_text())["body"]["memory"]["layout"]
    dump = CoreDump(str(core))
    try:
        for base, size, offset in layout:
            assert dump.read(base, size) == saved[offset:offset + size]
            assert clone.memory.read(base, size) == saved[offset:offset + size]
    finally:
        dump.close()


def test_snapshot_over_the_control_socket_and_stop(tmp_path: Path) -> None:
    kernel, control = image("tiny/echo.bzImage"), tmp_path / "vmm.sock"
    guest = subprocess.Popen(pyvmm_command("run", "-k", str(kernel), "-m", "64M", "--control",
                                           str(control), "--timeout", "60"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=REPO)
    try:
        line = guest.stdout.readline() if guest.stdout else b""
        assert b"echo ready" in line
        result = run_pyvmm("snapshot", str(control), str(tmp_path / "snap"), "--stop")
        assert result.status == 0, result.stderr
        assert "snapshot written to" in result.stdout
        assert guest.wait(30) == 0
    finally:
        guest.kill()
        guest.wait()
    assert not control.exists()
    again = run_pyvmm("run", "--restore", str(tmp_path / "snap"), stdin=b"ok q", timeout=60)
    assert again.status == 0 and again.stdout == "ok \npyvmm-tiny: bye\n"


def test_bad_snapshots_and_options_are_one_line_with_status_2(echo_snapshot: Path,
                                                            tmp_path: Path) -> None:
    state = echo_snapshot / STATE_FILE
    changed = run_pyvmm("run", "--restore", str(echo_snapshot), "--memory", "128M")
    assert changed.status == 2 and "--memory: a restored machine is the snapshot's" in \
        changed.stderr
    document = json.loads(state.read_text())
    document["body"]["config"]["memory"] = 128 << 20
    state.write_text(json.dumps(document))
    damaged = run_pyvmm("run", "--restore", str(echo_snapshot))
    assert damaged.status == 2 and damaged.stderr.count("\n") == 1
    assert "sha256 does not match" in damaged.stderr
    os.truncate(echo_snapshot / MEMORY_FILE, 1 << 20)
    with pytest.raises(PyvmmError, match="damaged"):
        pyvmm.Machine.restore(echo_snapshot)
