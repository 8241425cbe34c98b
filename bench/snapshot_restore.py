#!/usr/bin/env python3
"""Snapshot and restore of the tiny echo guest, in-process and as ``pyvmm run --restore``.

Reports the median of N runs of:

* cold boot, in-process: ``pyvmm.Machine(kernel=echo)`` called -> the guest echoes a
  typed line (its prompt printed first; a line, since a partial line's output waits
  for the UART ring's next poll, up to 0.32 s when idle);
* restore, in-process: ``pyvmm.Machine.restore(snapshot)`` called -> the same echo;
* cold boot and restore as a new ``pyvmm run`` process: spawn -> the echo on its stdout;
* snapshot: the guest's pause (``SnapshotInfo.seconds``), the wall time of
  ``vm.snapshot``, and the memory file's allocated size, for each ``--memory``;
* RSS growth of K concurrent clones of one snapshot, against K cold boots.

Usage: python3 bench/snapshot_restore.py [--runs 20] [--memory 64M 256M 1G] [--clones 1 4 16]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyvmm

REPO = Path(__file__).resolve().parents[1]
ECHO = REPO / "images" / "out" / "tiny" / "echo.bzImage"


def echo_once(vm: pyvmm.Machine, started: float, boot: bool) -> float:
    vm.start()
    if boot:
        vm.console.expect("echo ready", 60)
    vm.console.write("x\n")  # a line: output without a newline waits for the ring's poll
    vm.console.expect("x\n", 60)
    return time.perf_counter() - started


def cold(memory: str) -> float:
    started = time.perf_counter()
    vm = pyvmm.Machine(kernel=str(ECHO), memory=memory)
    try:
        return echo_once(vm, started, boot=True)
    finally:
        vm.stop()


def restored(snapshot: Path) -> float:
    started = time.perf_counter()
    vm = pyvmm.Machine.restore(snapshot)
    try:
        return echo_once(vm, started, boot=False)
    finally:
        vm.stop()


def process(args: list[str], boot: bool) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", *args, "--timeout", "60"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if boot:
            proc.stdout.readline()  # "pyvmm-tiny: echo ready"
        proc.stdin.write(b"x\n")
        proc.stdin.flush()
        assert proc.stdout.read(2) == b"x\n"
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def take_snapshot(directory: Path, memory: str) -> tuple[float, float, int, int]:
    """(pause seconds, wall seconds, file length, allocated bytes) of one snapshot."""
    with pyvmm.Machine(kernel=str(ECHO), memory=memory) as vm:
        vm.console.expect("echo ready", 60)
        started = time.perf_counter()
        info = vm.snapshot(directory)
        wall = time.perf_counter() - started
    stat = os.stat(directory / "memory.raw")
    return info.seconds, wall, stat.st_size, stat.st_blocks * 512


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def clones_rss(snapshot: Path | None, count: int, memory: str) -> int:
    """KiB of RSS that ``count`` running machines (clones, or cold boots) add."""
    before = rss_kib()
    machines = []
    try:
        for _ in range(count):
            vm = pyvmm.Machine.restore(snapshot) if snapshot else \
                pyvmm.Machine(kernel=str(ECHO), memory=memory)
            echo_once(vm, time.perf_counter(), boot=snapshot is None)
            machines.append(vm)
        return rss_kib() - before
    finally:
        for vm in machines:
            vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--memory", nargs="+", default=["64M", "256M", "1G"])
    parser.add_argument("--clones", nargs="+", type=int, default=[1, 4, 16])
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyvmm-bench-snap-"))
    try:
        print(f"snapshot of the echo guest at its prompt ({options.runs} runs where timed)")
        for memory in options.memory:
            pause, wall, length, allocated = take_snapshot(work / f"snap-{memory}", memory)
            print(f"  --memory {memory}: guest paused {pause * 1e3:.1f} ms, vm.snapshot "
                  f"{wall * 1e3:.1f} ms, memory file {length >> 20} MiB long, "
                  f"{allocated >> 10} KiB allocated")
        snapshot = work / f"snap-{options.memory[0]}"
        memory = options.memory[0]
        rows = [("in-process: cold boot", lambda: cold(memory)),
                ("in-process: restore", lambda: restored(snapshot)),
                ("pyvmm run: cold boot", lambda: process(["-k", str(ECHO), "-m", memory], True)),
                ("pyvmm run --restore", lambda: process(["--restore", str(snapshot)], False))]
        print(f"to the first console answer (median of {options.runs}, --memory {memory}):")
        for name, measure in rows:
            times = sorted(measure() for _ in range(options.runs))
            print(f"  {name:24} {statistics.median(times) * 1e3:7.1f} ms "
                  f"(min {times[0] * 1e3:.1f}, max {times[-1] * 1e3:.1f})")
        print(f"RSS added by concurrent machines (--memory {memory}):")
        for count in options.clones:
            print(f"  {count:3} clones: {clones_rss(snapshot, count, memory) / 1024:7.1f} MiB; "
                  f"{count:3} cold boots: {clones_rss(None, count, memory) / 1024:7.1f} MiB")
        print(f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
