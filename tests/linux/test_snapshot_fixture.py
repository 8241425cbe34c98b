"""The ``pyvmm_snapshot`` fixture on our minimal Linux (marker linux: the rig): a child pytest's
three tests each get a clone of a shell booted once, in one process and with ``-n 2``; each
clone runs its commands, finds only its own files and what the boot left, sees its clock go
on from the snapshot's, and powers off with status 0."""

from __future__ import annotations

import pytest

from tests.integration.conftest import image
from tests.integration.test_snapshot_fixture import left_behind, run_suite

from .guests import MINIMAL, QUIET

SUITE = """
import os
import re

import pytest

KERNEL, INITRD, APPEND, BOOTS, CLONES = {kernel!r}, {initrd!r}, {append!r}, {boots!r}, {clones!r}


def note(path):
    with open(path, "a") as stream:
        stream.write(f"{{os.getpid()}}\\n")


def uptime_noted(vm):
    note(BOOTS)
    vm.console.write("cut -d' ' -f1 /proc/uptime > /tmp/booted\\n")
    vm.console.expect("/ # ", 60)


@pytest.fixture
def shell(pyvmm_snapshot):
    return pyvmm_snapshot(kernel=KERNEL, initrd=INITRD, append=APPEND, memory="256M",
                          ready="/ # ", ready_timeout=300, prepare=uptime_noted, timeout=300)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_clone_of_the_shell(shell, n):
    note(CLONES)
    shell.console.write(f"echo {{n}} > /tmp/mine-{{n}}; echo \\"files=$(ls /tmp | tr '\\\\n' ,) "
                        "up=$(cut -d' ' -f1 /proc/uptime) booted=$(cat /tmp/booted)\\"\\n")
    found = shell.console.expect(r"files=(\\S*) up=([\\d.]+) booted=([\\d.]+)", 120)
    assert found.group(1) == f"booted,mine-{{n}},"   # no earlier clone's file
    assert float(found.group(2)) > float(found.group(3))  # its clock went on from the boot's
    shell.console.write("poweroff -f\\n")
    outcome = shell.wait(120)
    assert (outcome.status, outcome.kind) == (0, "poweroff"), outcome.reason
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_clones_of_one_linux_boot(pytester: pytest.Pytester, workers: list[str]) -> None:
    if workers:
        pytest.importorskip("xdist")
    result, boots, clones = run_suite(pytester, SUITE, *workers,
                                      kernel=str(image(MINIMAL.kernel)),
                                      initrd=str(image(MINIMAL.initrd)),
                                      append=f"console=ttyS0 {QUIET}")
    result.assert_outcomes(passed=3)
    assert len(boots) == 1 and len(clones) == 3
    if workers:
        assert len(set(clones)) == 2
    assert left_behind(pytester) == []
