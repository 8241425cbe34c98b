"""Restores of a real Linux (marker linux: hardware KVM or the rig): a shell with a disk,
snapshotted once per guest; its clocks after a restore, 20 restores in a row and 4 at once,
each clone on its own disk overlay answering at the console and powering off with status 0.

The guests: our minimal kernel with 1 vCPU and Debian's cloud kernel (its virtio drivers
modules the initramfs loads) with 2: both kernels and both vCPU counts in two boots, as the
file had before with the minimal kernel's 1 and 2 (CI's time: in one rig session the three
of minimal 1 and 2 and cloud 2 took 1.66x the minimal pair's time, these two 1.16x).  The
cloud kernel takes the 2-vCPU case: it has the most per-vCPU state a restore must carry
(kvmclock, steal time, PV EOI and async PF MSRs)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import pyvmm
from tests.integration.conftest import image

from .guests import CLOUD, MINIMAL, QUIET, Guest

PROMPT = "/ # "
#: The host's epoch when the guest was told it, and the guest's uptime at the snapshot.
Snap = tuple[Path, Path, float]


def _shell(vm: pyvmm.Machine, command: str, pattern: str, timeout: float = 120) -> re.Match:
    vm.console.write(command + "\n")
    found = vm.console.expect(pattern, timeout)
    vm.console.expect(PROMPT, timeout)
    return found


@pytest.fixture(scope="module", params=[(MINIMAL, 1), (CLOUD, 2)],
                ids=["minimal-1cpu", "cloud-2cpus"])
def linux_snapshot(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Snap:
    """(snapshot, disk, uptime at the snapshot): the shell (on ttyS0 for both kernels), its
    clock set to the host's, 'base' written to its disk, snapshotted and stopped."""
    guest: Guest = request.param[0]
    where = tmp_path_factory.mktemp("linux-snapshot")
    disk = where / "disk.img"
    disk.write_bytes(bytes(16 << 20))
    vm = pyvmm.Machine(kernel=str(image(guest.kernel)), initrd=str(image(guest.initrd)),
                       append=f"console=ttyS0 {QUIET}", memory="256M", cpus=request.param[1],
                       drives=[str(disk)], timeout=600)
    try:
        vm.start()
        vm.console.expect(PROMPT, 300)
        _shell(vm, f"date -s @{int(time.time())} >/dev/null; echo set", "set")
        _shell(vm, "echo base | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync; "
               "echo written", "written")
        uptime = float(_shell(vm, "cut -d' ' -f1 /proc/uptime", r"([\d.]+)\r?\n").group(1))
        vm.snapshot(where / "snap", stop=True)
        assert vm.wait(60).status == 0
    finally:
        vm.stop()
    return where / "snap", disk, uptime


def _clone(snap: Snap, start: bool = True) -> pyvmm.Machine:
    vm = pyvmm.Machine.restore(snap[0], snapshot=True, timeout=300)
    return vm.start() if start else vm


def _use_and_power_off(vm: pyvmm.Machine, n: int) -> None:
    """The clone answers, reads the boot's disk block, writes its own, powers off with 0.

    Each answer is matched up to its line's end: the console may deliver a line in pieces.
    """
    answer = _shell(vm, f"echo answer-$(({n} * 7)) $(dd if=/dev/vda bs=4 count=1 2>/dev/null)",
                    r"answer-(\d+) (\w+)\r?\n")
    assert answer.groups() == (str(n * 7), "base")
    mine = _shell(vm, f"echo clone{n} | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; "
                  "sync; echo 3 > /proc/sys/vm/drop_caches; "
                  "echo mine $(dd if=/dev/vda bs=16 count=1 2>/dev/null | head -n1)",
                  r"mine (\w+)\r?\n")
    assert mine.group(1) == f"clone{n}"
    vm.console.write("poweroff -f\n")
    outcome = vm.wait(120)
    assert (outcome.status, outcome.kind) == (0, "poweroff"), outcome.reason
    vm.stop()


def test_the_clocks_move_on_with_the_hosts(linux_snapshot: Snap) -> None:
    # Built 3 s before it starts (as the pytest fixture prepares its next clone): the clocks
    # a restore sets at the build run on from there with the host's, so at the start they
    # read the host's time, neither the snapshot's nor the build's.
    vm = _clone(linux_snapshot, start=False)
    try:
        time.sleep(3)
        vm.start()
        before = time.time()
        found = _shell(vm, "a=$(date +%s); u=$(cut -d' ' -f1 /proc/uptime); sleep 2; "
                       "v=$(cut -d' ' -f1 /proc/uptime); echo clocks $a $u $v",
                       r"clocks (\d+) ([\d.]+) ([\d.]+)\r?\n")
        after = time.time()
        realtime, up, up_after_sleep = int(found[1]), float(found[2]), float(found[3])
        # CLOCK_REALTIME is the host's (whole seconds), not the snapshot's 3 s behind.
        assert before - 2 <= realtime <= after + 1, (before, realtime, after)
        # The uptime clock (CLOCK_BOOTTIME: CLOCK_MONOTONIC, nothing suspended) went on
        # from the snapshot's by at least the time the snapshot waited.
        assert up >= linux_snapshot[2] + 3, (linux_snapshot[2], up)
        # A 2 s sleep after the restore lasts 2 s by the guest's clock and the host's.
        assert 1.9 <= up_after_sleep - up <= 4.0, (up, up_after_sleep)
        assert after - before >= 2.0
    finally:
        vm.stop()
    _power_check(linux_snapshot)


def _power_check(snap: Snap) -> None:
    """The boot's image is as the boot left it: every clone wrote its own overlay."""
    assert snap[1].read_bytes()[:5] == b"base\n"


def test_twenty_restores_in_a_row(linux_snapshot: Snap) -> None:
    seconds = []
    for n in range(20):
        start = time.monotonic()
        vm = _clone(linux_snapshot)
        try:
            _use_and_power_off(vm, n)
        finally:
            vm.stop()
        seconds.append(time.monotonic() - start)
    print(f"20 restores: median {sorted(seconds)[10]:.2f} s, max {max(seconds):.2f} s")
    _power_check(linux_snapshot)


def test_four_restores_at_once(linux_snapshot: Snap) -> None:
    clones = [_clone(linux_snapshot) for _ in range(4)]
    errors: list[BaseException] = []

    def use(vm: pyvmm.Machine, n: int) -> None:
        try:
            _use_and_power_off(vm, n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(vm, n)) for n, vm in enumerate(clones)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    finally:
        for vm in clones:
            vm.stop()
    assert not errors, errors
    _power_check(linux_snapshot)
