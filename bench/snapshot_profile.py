#!/usr/bin/env python3
"""Where an in-process restore of a Linux shell spends its time, phase by phase.

Runs where Linux reaches user space (the rig).  Boots our minimal Linux
(``quiet``, busybox at ``/ # ``, a raw disk) once, snapshots it at the prompt,
then restores it ``--runs`` times (``snapshot=True``: disk overlays, as the
fixture does) and prints, per phase, the median of:

* ``load``: ``load_snapshot`` (state file read, checked, decoded; disks checked);
* ``build``: ``build_machine`` (RAM mapped, KVM VM and vCPUs, state written back,
  devices), and ``start``: the machine's thread started;
* ``answer``: ``echo r$((6*7))`` typed -> ``r42`` read (the guest's own work and
  the console's round trip), then the same again (``2nd answer``: the steady
  state, with the clone's first-touch page faults behind it);

``--variants`` adds, alternating with those, restores made differently, to see
what makes a clone's first answer slower than the booted guest's:
``populate``: the RAM's data extents (the memory file's, by SEEK_DATA/SEEK_HOLE)
prefaulted with ``MADV_POPULATE_READ`` first (first-touch faults of the private
mapping?); ``uart-c``: ``PYVMM_UART_FASTPATH=c``, no coalesced THR ring, so
no ring zone (un)registered, each an SRCU grace period in KVM;

then the cProfile of ``--profile`` more restores to their first answer (the
slowest functions by cumulative and own time; the vCPU thread is not profiled:
only what the calling thread does).

Usage: python3 bench/snapshot_profile.py [--runs 5] [--profile 3] [--memory 256M]
                                             [--variants populate uart-c]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import pyvmm
from pyvmm.host.sparse import data_extents
from pyvmm.snapshot import memfile, restore as restore_module
from pyvmm.snapshot.restore import load_snapshot

REPO = Path(__file__).resolve().parents[1]
KERNEL = REPO / "images" / "out" / "linux" / "bzImage"
INITRD = REPO / "images" / "out" / "initramfs.cpio.gz"
PROMPT = b"/ # "


def ask(vm: pyvmm.Machine, number: int) -> None:
    vm.console.write(f"echo r$(({number}*7))\n".encode())
    vm.console.expect(f"r{number * 7}".encode(), 300)


MADV_POPULATE_READ = 22  # Linux 5.14


def populate(memory, path: Path, layout) -> int:  # (GuestMemory, ..., its layout)
    """Prefault the data extents of ``path`` in ``memory``; how many extents."""
    extents = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for region, (_, size, offset) in zip(memory.regions, layout):
            for data, length in data_extents(fd, offset, offset + size):
                region.buffer.madvise(MADV_POPULATE_READ, data - offset, length)
                extents += 1
    finally:
        os.close(fd)
    return extents


def restore_phases(snapshot: Path, variant: str = "plain") -> dict[str, float]:
    if variant == "uart-c":
        os.environ["PYVMM_UART_FASTPATH"] = "c"
        try:
            return restore_phases(snapshot)
        finally:
            del os.environ["PYVMM_UART_FASTPATH"]
    prefault = variant == "populate"
    marks = [time.perf_counter()]
    loaded = load_snapshot(str(snapshot), snapshot=True)
    marks.append(time.perf_counter())
    vm = pyvmm.Machine.__new__(pyvmm.Machine)
    real_map = memfile.map_memory
    if prefault:
        def map_and_populate(directory: str, layout):  # type: ignore[no-untyped-def]
            memory = real_map(directory, layout)
            began = time.perf_counter()
            extents = populate(memory, Path(directory) / "memory.raw", layout)
            print(f"  (populated {extents} extents in "
                  f"{(time.perf_counter() - began) * 1e3:.1f} ms)", flush=True)
            return memory
        setattr(restore_module, "map_memory", map_and_populate)
    try:
        vm._build(loaded.config, loaded)
    finally:
        setattr(restore_module, "map_memory", real_map)
    marks.append(time.perf_counter())
    try:
        vm.start()
        marks.append(time.perf_counter())
        ask(vm, 6)
        marks.append(time.perf_counter())
        ask(vm, 8)
        marks.append(time.perf_counter())
    finally:
        vm.stop()
    names = ("load", "build", "start", "answer", "2nd answer")
    phases = {name: marks[i + 1] - marks[i] for i, name in enumerate(names)}
    phases["total to 1st answer"] = marks[4] - marks[0]
    return phases


def restore_to_answer(snapshot: Path) -> None:
    vm = pyvmm.Machine.restore(snapshot, snapshot=True)
    try:
        vm.start()
        ask(vm, 6)
    finally:
        vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", type=int, default=3)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--variants", nargs="*", default=[], choices=("populate", "uart-c"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyvmm-profile-") as where:
        work = Path(where)
        disk = work / "disk.img"
        disk.write_bytes(bytes(16 << 20))
        snapshot = work / "snap"
        started = time.perf_counter()
        with pyvmm.Machine(kernel=str(KERNEL), initrd=str(INITRD), memory=args.memory,
                           append="console=ttyS0 quiet", drives=[str(disk)],
                           timeout=600) as vm:
            vm.console.expect(PROMPT, 300)
            boot = time.perf_counter() - started
            answers = []
            for number in (5, 9, 11):
                asked = time.perf_counter()
                ask(vm, number)
                answers.append(time.perf_counter() - asked)
                vm.console.expect(PROMPT, 60)
            info = vm.snapshot(snapshot, stop=True)
            vm.wait(60)
        print(f"boot to the prompt {boot:.2f} s; the booted guest's answers "
              f"{' '.join(f'{a * 1e3:.0f}' for a in answers)} ms; snapshot paused the guest "
              f"{info.seconds * 1e3:.0f} ms", flush=True)
        variants = ["plain", *args.variants]
        runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
        for _ in range(args.runs):
            for variant in variants:
                runs[variant].append(restore_phases(snapshot, variant))
        for variant, done in runs.items():
            print(f"\n== restore phases, {args.memory}, median of {args.runs} (ms), "
                  f"{variant} ==")
            for name in done[0]:
                values = [run[name] * 1e3 for run in done]
                print(f"  {name:22} {statistics.median(values):8.1f}   (all: "
                      f"{' '.join(f'{v:.1f}' for v in values)})")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.profile):
            restore_to_answer(snapshot)
        profile.disable()
        for order in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(order).print_stats(args.top)
            print(f"\n== cProfile of {args.profile} restores to the first answer, by {order} ==")
            print("\n".join(line for line in out.getvalue().splitlines()
                            if line.strip() and "Ordered by" not in line), flush=True)


if __name__ == "__main__":
    main()
