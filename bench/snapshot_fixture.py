#!/usr/bin/env python3
"""Per-test time of a pytest suite on clones (``pyvmm_snapshot``) against cold boots
(``pyvmm_machine``): the same N tests, each typing a word into the tiny echo guest and
waiting for its answer.

Each suite runs in a child ``pytest`` (in one process, then with ``-n 2``); a test's time is
its setup, call and teardown as pytest's JUnit XML gives them (``junit_duration_report``
total).  Reports per suite: the child pytest's wall time, the first test (which boots, for
the clones) and the median and total of all tests.

Usage: python3 bench/snapshot_fixture.py [--tests 12] [--memory 64M] [--repeat 3]
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
ECHO = REPO / "images" / "out" / "tiny" / "echo.bzImage"

SUITE = """
import pytest

@pytest.fixture
def echo({fixture}):
    {body}

@pytest.mark.parametrize("n", range({tests}))
def test_echo(echo, n):
    echo.console.write(f"word{{n}}\\n")
    echo.console.expect(f"word{{n}}\\n", 30)
"""
CLONE = 'return pyvmm_snapshot(kernel={kernel!r}, memory={memory!r}, ready="echo ready")'
COLD = ('vm = pyvmm_machine(kernel={kernel!r}, memory={memory!r})\n'
        '    vm.console.expect("echo ready", 30)\n'
        '    return vm')


def run_suite(directory: Path, body: str, fixture: str, tests: int,
              workers: list[str]) -> tuple[float, list[tuple[str, float]]]:
    """(wall seconds of the child pytest, [(test, seconds)] in the order they ran)."""
    for old in directory.glob("*"):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    (directory / "test_suite.py").write_text(SUITE.format(fixture=fixture, body=body,
                                                          tests=tests))
    report = directory / "junit.xml"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={report}", f"--basetemp={directory / 'tmp'}",
                    "-o", "junit_duration_report=total", *workers],
                   cwd=directory, check=True, capture_output=True, timeout=600)
    wall = time.perf_counter() - started
    cases = ElementTree.parse(report).getroot().iter("testcase")
    return wall, [(case.get("name", "?"), float(case.get("time", "0"))) for case in cases]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=12)
    parser.add_argument("--memory", default="64M")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each suite (medians)")
    options = parser.parse_args()
    modes = [[]] + ([["-n", "2"]] if importlib.util.find_spec("xdist") else [])
    suites = [("cold boots (pyvmm_machine)", COLD, "pyvmm_machine"),
              ("clones (pyvmm_snapshot)", CLONE, "pyvmm_snapshot")]
    work = Path(tempfile.mkdtemp(prefix="pyvmm-bench-fixture-"))
    try:
        print(f"{options.tests} tests on the echo guest (--memory {options.memory}), "
              f"median of {options.repeat} runs of each suite; seconds")
        print(f"{'suite':30} {'pytest':>8} {'wall':>7} {'first test':>11} "
              f"{'median test':>12} {'all tests':>10}")
        for workers in modes:
            for name, body, fixture in suites:
                runs = [run_suite(work, body.format(kernel=str(ECHO), memory=options.memory),
                                  fixture, options.tests, workers)
                        for _ in range(options.repeat)]
                wall = statistics.median(run[0] for run in runs)
                first = statistics.median(run[1][0][1] for run in runs)
                median = statistics.median(statistics.median(t for _, t in run[1])
                                           for run in runs)
                total = statistics.median(sum(t for _, t in run[1]) for run in runs)
                print(f"{name:30} {' '.join(workers) or '-':>8} {wall:7.2f} {first:11.3f} "
                      f"{median:12.4f} {total:10.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
