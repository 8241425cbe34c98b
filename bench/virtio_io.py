#!/usr/bin/env python3
"""Virtio data-path benchmark: pyvmm and QEMU -M microvm, same tiny guest, one run.

The ``vbench`` tiny guest (images/tiny) issues sequential virtio-block
reads or writes of a given request size, or console writes, polling the used
ring, without touching the data: what is measured is the VMM's data path.
Each figure is (wall time of a run doing the work) minus (wall time of the
same run with ``bench=none``), median over --runs, so boot and exit costs
cancel out.  Output: MB/s, IOPS, and per-request latency at queue depth 1,
with the pyvmm/QEMU ratio.

Usage: python3 bench/virtio_io.py [--runs 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "images" / "out" / "tiny"
QEMU = shutil.which("qemu-system-x86_64")
DISK_SIZE = 256 << 20


@dataclass(frozen=True)
class Workload:
    name: str
    bench: str
    bs: int
    total: int
    depth: int = 1


WORKLOADS = (
    Workload("seq read 1 MiB", "read", 1 << 20, 4 << 30, depth=4),
    Workload("seq write 1 MiB", "write", 1 << 20, 2 << 30, depth=4),
    Workload("seq read 4 KiB", "read", 4096, 64 << 20, depth=16),
    Workload("seq write 4 KiB", "write", 4096, 64 << 20, depth=16),
    Workload("latency 4 KiB read, depth 1", "read", 4096, 16 << 20, depth=1),
    Workload("console 4 KiB writes", "console", 4096, 32 << 20, depth=1),
)


def guest_args(work: Workload | None) -> str:
    if work is None:
        return "bench=none"
    return f"bench={work.bench} bs={work.bs} total={work.total} depth={work.depth}"


def pyvmm_command(disk: str, work: Workload | None) -> list[str]:
    return [sys.executable, "-m", "pyvmm", "run", "-k", str(TINY / "vbench.bzImage"),
            "-m", "512M", "--drive", f"path={disk}",
            "-a", f"console=ttyS0 {guest_args(work)}", "--timeout", "600"]


def qemu_command(disk: str, work: Workload | None) -> list[str]:
    return [QEMU or "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-enable-kvm", "-cpu", "host,-cx16,-xsave,-arch-capabilities", "-m", "512M",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"id=d0,file={disk},format=raw,if=none,cache=writeback",
            "-device", "virtio-blk-device,drive=d0",
            "-device", "virtio-serial-device", "-chardev", "file,id=con0,path=/dev/null",
            "-device", "virtconsole,chardev=con0",
            "-kernel", str(TINY / "vbench.elf"), "-append", guest_args(work)]


def wall(command: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, cwd=REPO)
    elapsed = time.monotonic() - start
    if b"vbench: done" not in proc.stdout:
        raise RuntimeError(f"{command[0]} run failed (status {proc.returncode}):\n"
                           f"{proc.stdout.decode(errors='replace')[-2000:]}"
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def measure(make, disk: str, work: Workload, runs: int, baseline: float) -> float:
    return max(statistics.median(wall(make(disk, work)) for _ in range(runs)) - baseline,
               1e-6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the data sizes")
    args = parser.parse_args()
    for needed in ("vbench.bzImage", "vbench.elf"):
        if not (TINY / needed).exists():
            sys.exit(f"{TINY / needed} is missing: run 'bash images/build.sh tiny'")
    vmms = [("pyvmm", pyvmm_command)] + ([("QEMU", qemu_command)] if QEMU else [])
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "bench.img")
        with open(disk, "wb") as image:
            image.write(os.urandom(1 << 20) * (DISK_SIZE >> 20))  # real blocks, not holes
        baselines = {name: statistics.median(wall(make(disk, None)) for _ in range(args.runs))
                     for name, make in vmms}
        print("baseline (boot + exit, bench=none): " +
              ", ".join(f"{name} {t:.3f} s" for name, t in baselines.items()))
        header = f"{'workload':30}" + "".join(f"{name + ' MB/s':>12}{name + ' IOPS':>12}"
                                               f"{name + ' us/op':>12}" for name, _ in vmms)
        print(header + ("   pyvmm/QEMU MB/s" if len(vmms) > 1 else ""))
        for work in WORKLOADS:
            work = Workload(work.name, work.bench, work.bs, int(work.total * args.scale),
                            work.depth)
            ops = work.total // work.bs
            line = f"{work.name:30}"
            rates = []
            for name, make in vmms:
                seconds = measure(make, disk, work, args.runs, baselines[name])
                rates.append(work.total / seconds / 1e6)
                line += f"{rates[-1]:12.1f}{ops / seconds:12.0f}{seconds / ops * 1e6:12.1f}"
            if len(rates) > 1:
                line += f"   {rates[0] / rates[1]:.2f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
