"""The ``pyvmm_snapshot`` fixture on a small suite of its own, run by a child pytest: the echo
guest boots once per run (also across two pytest-xdist workers), each test gets a clone of it
that answers what it types, a clone's changes don't reach the next one (the next clone is
restored ahead while a test runs: every call but a process's first takes one), nothing of a
clone is left when the run ends (the one restored ahead and never taken included), and a boot
that never gets ready fails every test that needs it in one line, at the cost of one boot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import plugin_autoloaded
from tests.integration.conftest import image

PLUGIN = [] if plugin_autoloaded() else ["-p", "pyvmm.pytest_plugin"]

#: Three tests, each on its own clone of the echo guest, snapshotted after it echoed "primed".
#: ``primed`` runs once per boot and each test once per clone: both write down their process.
SUITE = """
import os

import pytest

ECHO, BOOTS, CLONES = {echo!r}, {boots!r}, {clones!r}
BYE = b"pyvmm-tiny: bye"


def note(path, what=""):
    with open(path, "a") as stream:
        stream.write(f"{{os.getpid()}}{{what}}\\n")


def primed(vm):
    note(BOOTS)
    vm.console.write("primed\\n")
    vm.console.expect("primed\\n", 30)


@pytest.fixture
def echo(pyvmm_snapshot):
    return pyvmm_snapshot(kernel=ECHO, memory="64M", ready="echo ready", prepare=primed,
                          timeout=60)


@pytest.mark.parametrize("word", ["alpha", "beta", "gamma"])
def test_a_clone_answers_its_own_words(echo, word, pyvmm_prepared_clones):
    note(CLONES, f":{{pyvmm_prepared_clones.taken}}")  # clones this process took ready-made
    assert echo.console.text == ""          # no boot: it runs on from the snapshot
    echo.console.write(word + "\\n")
    echo.console.expect(word + "\\n", 30)
    # The guest's goodbye, in its RAM: as the boot left it, whatever an earlier clone did.
    where = 0x100000 + echo.memory.read(0x100000, 1 << 20).index(BYE)
    assert echo.memory.read(where, len(BYE)) == BYE
    echo.memory.write(where + len(BYE) - 3, word[:3].upper().encode())
    echo.console.write(" q")
    assert echo.wait(30).status == 0        # the guest read "q" and reset itself
    assert echo.console.text == f"{{word}}\\n \\npyvmm-tiny: {{word[:3].upper()}}\\n"
"""


#: Each process of the child run writes down, at its end, what it holds of pyvmm that it did
#: not hold at its start: fds (KVM's, eventfds, unnamed temporary files such as a disk
#: overlay), mappings of a snapshot's memory file, pyvmm's threads.
LEFT_CONFTEST = """
import json
import os
import threading

LEFT = {left!r}


def held():
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{{fd}}")
        except OSError:
            continue
        if "kvm" in target or "eventfd" in target or target.endswith("(deleted)"):
            fds.add(target)
    with open("/proc/self/maps") as maps:
        mapped = {{line.split()[-1] for line in maps if "memory.raw" in line}}
    threads = {{t.name for t in threading.enumerate() if t.name.startswith("pyvmm")}}
    return fds, mapped, threads


def pytest_configure(config):
    config.pyvmm_held_at_start = held()


def pytest_unconfigure(config):
    left = [sorted(now - before) for now, before in zip(held(), config.pyvmm_held_at_start)]
    with open(LEFT, "a") as stream:
        stream.write(json.dumps(left) + "\\n")
"""


def run_suite(pytester: pytest.Pytester, suite: str, *args: str,
              **names: str) -> tuple[pytest.RunResult, list[str], list[str]]:
    """Run ``suite`` (given ``names`` and the files ``boots`` and ``clones`` it writes to) in
    a child pytest: its result, and the processes that booted and that ran a test.  Every
    process of the run ends holding nothing of pyvmm's it did not hold at its start."""
    boots, clones, left = (pytester.path / name for name in ("boots", "clones", "left"))
    pytester.makepyfile(test_suite=suite.format(boots=str(boots), clones=str(clones), **names))
    pytester.makeconftest(LEFT_CONFTEST.format(left=str(left)))
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", *args,
                                           timeout=900)
    lines = [path.read_text().split() if path.exists() else [] for path in (boots, clones)]
    ends = [json.loads(line) for line in left.read_text().splitlines()]
    assert ends and all(end == [[], [], []] for end in ends), ends
    return result, lines[0], lines[1]


def ready_made(clones: list[str]) -> dict[str, int]:
    """Per process of the run, how many clones it took restored ahead (by its last test)."""
    counts: dict[str, int] = {}
    for line in clones:
        process, taken = line.split(":")
        counts[process] = max(counts.get(process, 0), int(taken))
    return counts


def left_behind(pytester: pytest.Pytester) -> list[Path]:
    return sorted(pytester.path.rglob("pyvmm-snapshots*"))


def test_three_tests_three_clones_one_boot(pytester: pytest.Pytester) -> None:
    result, boots, clones = run_suite(pytester, SUITE, echo=str(image("tiny/echo.bzImage")))
    result.assert_outcomes(passed=3)
    assert len(boots) == 1 and len(clones) == 3
    # The first call restored in the foreground; each later one took the clone restored
    # ahead while the test before it ran (the test reads the count after its own call).
    assert list(ready_made(clones).values()) == [2]
    assert left_behind(pytester) == []      # the last user removed the snapshot


def test_two_xdist_workers_share_one_boot(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result, boots, clones = run_suite(pytester, SUITE, "-n", "2",
                                      echo=str(image("tiny/echo.bzImage")))
    result.assert_outcomes(passed=3)
    assert len(boots) == 1 and len(clones) == 3
    counts = ready_made(clones)
    assert len(counts) == 2                 # both workers ran clones of the one boot
    assert sum(counts.values()) == 1        # each worker's first call restored its own
    assert left_behind(pytester) == []


FAILING = """
import pytest

ECHO, EXITCODE = {echo!r}, {exitcode!r}


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_never_ready(pyvmm_snapshot, attempt):
    pyvmm_snapshot(kernel=ECHO, memory="64M", ready="never printed", ready_timeout=2)


def test_stops_first(pyvmm_snapshot):
    pyvmm_snapshot(kernel=EXITCODE, append="exitcode=5", ready="never printed")


def broken(vm):
    assert False, "prepare went wrong"


@pytest.mark.parametrize("attempt", [1, 2])
def test_prepare_fails(pyvmm_snapshot, attempt):
    pyvmm_snapshot(kernel=ECHO, memory="64M", ready="echo ready", prepare=broken)
"""


def failure_lines(result: pytest.RunResult) -> dict[str, str]:
    """Each failed test's line that starts with "pyvmm_snapshot:", by the test's name."""
    said, test = {}, ""
    for line in result.outlines:
        heading = re.fullmatch(r"_{3,} (\S+) _{3,}", line)
        if heading:
            test = heading.group(1)
        elif line.startswith("pyvmm_snapshot:"):
            said[test] = line
    return said


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_boot_that_never_gets_ready_fails_its_tests_in_one_line(
        pytester: pytest.Pytester, workers: list[str]) -> None:
    if workers:
        pytest.importorskip("xdist")
    pytester.makepyfile(test_failing=FAILING.format(echo=str(image("tiny/echo.bzImage")),
                                                    exitcode=str(image("tiny/exitcode.bzImage"))))
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-rf", *workers,
                                           timeout=300)
    result.assert_outcomes(failed=6)
    said = failure_lines(result)
    timed_out = [said[f"test_never_ready[{attempt}]"] for attempt in (1, 2, 3)]
    # One process booted and waited 2 s; the other tests read why and failed at once.
    assert all(line.startswith("pyvmm_snapshot: ") and
               line.endswith("echo.bzImage's console did not match 'never printed' within 2 s")
               for line in timed_out)
    assert sum("the boot failed (in " in line for line in timed_out) == 2
    assert said["test_stops_first"] == (
        "pyvmm_snapshot: exitcode.bzImage stopped before its console matched 'never printed': "
        "the guest reported exit status 11 through the debug-exit port")
    # prepare's own error, with its traceback, fails the test that booted; the other reads it
    read = [line for test, line in said.items() if test.startswith("test_prepare_fails")]
    assert len(read) == 1 and re.fullmatch(r"pyvmm_snapshot: the boot failed \(in (main|gw\d)\): "
                                           r"AssertionError: prepare went wrong", read[0])
    result.stdout.fnmatch_lines(["E   *AssertionError: prepare went wrong"])
    assert "During handling of the above exception" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*pyvmm console 0: echo.bzImage*", "*echo ready*"])
    assert result.duration < 60
    assert left_behind(pytester) == []


#: Three tests on clones of the vblk guest, its disk written 'a' before the snapshot: each
#: clone reads 'a', writes its own byte to its own overlay and reads it back.
DISK_SUITE = """
import pytest

VBLK, DISK = {vblk!r}, {disk!r}


def wrote_a(vm):
    vm.console.write("wa")
    vm.console.expect("vblk: wrote a\\n", 30)


@pytest.fixture
def vblk(pyvmm_snapshot):
    return pyvmm_snapshot(kernel=VBLK, memory="64M", append="console=ttyS0 blktest=console",
                          drives=[DISK], ready="vblk: ready", prepare=wrote_a, timeout=60)


@pytest.mark.parametrize("byte", ["x", "y", "z"])
def test_a_clone_writes_its_own_overlay(vblk, byte):
    vblk.console.write("r")
    vblk.console.expect("vblk: read a\\n", 30)
    vblk.console.write("w" + byte + "r")
    vblk.console.expect(f"vblk: wrote {{byte}}\\nvblk: read {{byte}}\\n", 30)
    vblk.console.write("q")
    assert vblk.wait(30).status == 0
"""


def test_clones_of_a_machine_with_a_disk_each_write_their_own(pytester: pytest.Pytester,
                                                              tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(2 << 20))
    result, _, _ = run_suite(pytester, DISK_SUITE, vblk=str(image("tiny/vblk.bzImage")),
                             disk=str(disk))
    result.assert_outcomes(passed=3)
    # The boot wrote 'a' to the image; no clone's byte reached it.
    assert disk.read_bytes()[:4096] == b"a" * 4096
    assert left_behind(pytester) == []
