#!/usr/bin/env python3
"""Per-test time of a pytest suite on clones (``pyvmm_snapshot``) against cold boots
(``pyvmm_machine``): the same N tests, each typing into a guest and waiting for its answer:
the tiny echo guest (here), or our minimal Linux's shell (``--guest linux``: in the rig).

Each suite runs in a child ``pytest`` (in one process, then with ``-n 2``); a test's time is
its setup, call and teardown as pytest's JUnit XML gives them (``junit_duration_report``
total).  Reports per suite: the child pytest's wall time, the first test (which boots, for
the clones), the median and total of all tests, and the median of the factory's call to the
guest's first answer (the test's own clock, the first test left out: it boots).  The clones
run twice: as the fixture gives them, the next clone restored ahead while a test runs
(``prepared``), and with ``prepare_next=False`` (each call restores): what the call saves
is ahead-of-time work, not a faster restore.

Usage: python3 bench/snapshot_fixture.py [--guest echo|linux] [--tests 12] [--repeat 3]
                                         [--memory SIZE] [--workers 1 2] [--suites ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images" / "out"

#: Per guest: the machine, the console's ready pattern, what a test types and waits for.
GUESTS = {
    "echo": ({"kernel": str(IMAGES / "tiny" / "echo.bzImage")}, "echo ready",
             'f"word{n}\\n"', 'f"word{n}\\n"', "64M"),
    "linux": ({"kernel": str(IMAGES / "linux" / "bzImage"),
               "initrd": str(IMAGES / "initramfs.cpio.gz"), "append": "console=ttyS0 quiet"},
              "/ # ", 'f"echo $((1000 + {n}))\\n"', 'f"{1000 + n}"', "256M"),
}

SUITE = """
import time

import pytest

MACHINE, READY = {machine!r}, {ready!r}

@pytest.fixture
def guest({fixture}):
    def make():
        {body}
    return make

@pytest.mark.parametrize("n", range({tests}))
def test_answer(guest, n, record_property):
    started = time.perf_counter()
    vm = guest()
    vm.console.write({typed})
    vm.console.expect({answer}, 120)
    record_property("answer_seconds", time.perf_counter() - started)
"""
CLONE = ('return pyvmm_snapshot(**MACHINE, ready=READY, ready_timeout=120, timeout=600, '
         'prepare_next={prepare_next})')
COLD = ('vm = pyvmm_machine(**MACHINE, timeout=600)\n'
        '        vm.console.expect(READY, 120)\n'
        '        return vm')
#: By ``--suites`` name: (the row's name, the fixture's body, the fixture it takes).
SUITES = {
    "cold": ("cold boots (pyvmm_machine)", COLD, "pyvmm_machine"),
    "clones": ("clones, each restored in its call", CLONE.format(prepare_next=False),
               "pyvmm_snapshot"),
    "prepared": ("clones, the next restored ahead", CLONE.format(prepare_next=True),
                 "pyvmm_snapshot"),
}


def run_suite(directory: Path, suite: str,
              workers: list[str]) -> tuple[float, list[tuple[str, float, float]]]:
    """(wall seconds of the child pytest, [(test, seconds, call to answer)] as they ran)."""
    for old in directory.glob("*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    (directory / "test_suite.py").write_text(suite)
    report = directory / "junit.xml"
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={report}", f"--basetemp={directory / 'tmp'}",
                            "-o", "junit_duration_report=total", *workers],
                           cwd=directory, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"the suite failed (status {child.returncode}):\n{child.stdout[-8000:]}")
    cases = ElementTree.parse(report).getroot().iter("testcase")
    return wall, [(case.get("name", "?"), float(case.get("time", "0")),
                   float(next(prop.get("value", "nan") for prop in case.iter("property")
                              if prop.get("name") == "answer_seconds")))
                  for case in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guest", choices=sorted(GUESTS), default="echo")
    parser.add_argument("--tests", type=int, default=12)
    parser.add_argument("--memory", help="guest RAM (default: 64M echo, 256M linux)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each suite (medians)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="pytest processes: 1, or N xdist workers (-n N)")
    parser.add_argument("--suites", nargs="+", choices=tuple(SUITES), default=list(SUITES))
    options = parser.parse_args()
    machine, ready, typed, answer, memory = GUESTS[options.guest]
    machine = {**machine, "memory": options.memory or memory}
    if not importlib.util.find_spec("xdist"):
        options.workers = [1]
    suites = [SUITES[name] for name in options.suites]
    work = Path(tempfile.mkdtemp(prefix="pyvmm-bench-fixture-"))
    try:
        print(f"{options.tests} tests on the {options.guest} guest (--memory "
              f"{machine['memory']}), median of {options.repeat} runs of each suite; seconds")
        print(f"{'suite':34} {'pytest':>8} {'wall':>7} {'first test':>11} "
              f"{'median test':>12} {'all tests':>10} {'call->answer':>13}", flush=True)
        for count in options.workers:
            workers = ["-n", str(count)] if count > 1 else []
            for name, body, fixture in suites:
                suite = SUITE.format(machine=machine, ready=ready, fixture=fixture, body=body,
                                     tests=options.tests, typed=typed, answer=answer)
                runs = [run_suite(work, suite, workers) for _ in range(options.repeat)]
                wall = statistics.median(run[0] for run in runs)
                first = statistics.median(run[1][0][1] for run in runs)
                median = statistics.median(statistics.median(t for _, t, _ in run[1])
                                           for run in runs)
                total = statistics.median(sum(t for _, t, _ in run[1]) for run in runs)
                to_answer = statistics.median(statistics.median(a for _, _, a in run[1][1:])
                                              for run in runs)
                print(f"{name:34} {' '.join(workers) or '-':>8} {wall:7.2f} {first:11.3f} "
                      f"{median:12.4f} {total:10.3f} {to_answer:13.4f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
