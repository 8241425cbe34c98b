#!/usr/bin/env python3
"""Boot-time benchmark: pyvmm side by side with QEMU -M microvm, same guests.

For each scenario it runs the command N times and reports the median wall time
from process start to a marker on the console, and to process exit.  Guests:

* the tiny ``bootcheck`` guest (pyvmm: bzImage; QEMU: the PVH ELF of
  ``vbench bench=none``, which does the same nothing);
* the minimal Linux kernel and initramfs from images/, timed to the kernel's
  banner (``Linux version``), and to exit.  On a kvm_pvm host the kernel stops
  on an emulation failure early in boot; the time to that exit is still
  measured, for both VMMs;
* the same kernel as an ELF through PVH, with the command-line arguments a
  kvm_pvm host needs, timed to ``Run /init``.

Usage: python3 bench/boot_time.py [--runs 5] [--quiet-kernel]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "images" / "out"
QEMU = shutil.which("qemu-system-x86_64")
QEMU_MICROVM = [QEMU or "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
                "-enable-kvm", "-cpu", "host,-cx16,-xsave,-arch-capabilities", "-m", "512M", "-smp", "1",
                "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


@dataclass
class Scenario:
    name: str
    command: list[str]
    marker: bytes
    needs: list[Path]


@dataclass
class Timing:
    to_marker: float | None
    to_exit: float
    status: int


def pyvmm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyvmm", "run", *args]


def time_once(command: list[str], marker: bytes, limit: float) -> Timing:
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO)
    seen = b""
    to_marker = None
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while True:
        remaining = limit - (time.monotonic() - start)
        if remaining <= 0:
            proc.kill()
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        if to_marker is None:
            seen = (seen + chunk)[-4096:]
            if marker in seen:
                to_marker = time.monotonic() - start
    status = proc.wait()
    return Timing(to_marker, time.monotonic() - start, status)


def scenarios(quiet: bool) -> list[Scenario]:
    tiny = OUT / "tiny"
    linux, initramfs = OUT / "linux" / "bzImage", OUT / "initramfs.cpio.gz"
    vmlinux = OUT / "linux" / "vmlinux"
    append = "console=ttyS0 reboot=k panic=-1" + (" quiet" if quiet else "")
    # What gets a stock kernel past what kvm_pvm's emulator can't run (README).
    pvm_append = append + " noxsave clearcpuid=popcnt,smap,smep"
    result = [
        Scenario("tiny guest, pyvmm", pyvmm("-k", str(tiny / "bootcheck.bzImage"),
                                            "-a", "console=ttyS0"),
                 b"pyvmm-tiny: hello", [tiny / "bootcheck.bzImage"]),
        Scenario("tiny guest, QEMU microvm (PVH)",
                 QEMU_MICROVM + ["-kernel", str(tiny / "vbench.elf"),
                                 "-append", "bench=none"],
                 b"vbench: done", [tiny / "vbench.elf"]),
        Scenario("Linux 6.1 + initramfs, pyvmm",
                 pyvmm("-k", str(linux), "-i", str(initramfs), "-a", append,
                       "--timeout", "60"),
                 b"Linux version", [linux, initramfs]),
        Scenario("Linux 6.1 + initramfs, QEMU microvm",
                 QEMU_MICROVM + ["-kernel", str(linux), "-initrd", str(initramfs),
                                 "-append", append + " noxsave"],
                 b"Linux version", [linux, initramfs]),
        Scenario("Linux 6.1 ELF (PVH) to /init, pyvmm",
                 pyvmm("-k", str(vmlinux), "-i", str(initramfs), "-a", pvm_append,
                       "--timeout", "300"),
                 b"Run /init", [vmlinux, initramfs]),
        Scenario("Linux 6.1 ELF (PVH) to /init, QEMU microvm",
                 QEMU_MICROVM + ["-kernel", str(vmlinux), "-initrd", str(initramfs),
                                 "-append", pvm_append],
                 b"Run /init", [vmlinux, initramfs]),
    ]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit", type=float, default=90.0, help="seconds per run")
    parser.add_argument("--quiet-kernel", action="store_true", help="add 'quiet' to Linux")
    parser.add_argument("--only", default="", help="run the scenarios whose name has this")
    args = parser.parse_args()
    print(f"{'scenario':40} {'to marker (s)':>14} {'to exit (s)':>12}  exit status")
    for scenario in scenarios(args.quiet_kernel):
        if args.only not in scenario.name:
            continue
        missing = [str(p) for p in scenario.needs if not p.exists()]
        if "QEMU" in scenario.name and QEMU is None:
            missing.append("qemu-system-x86_64")
        if missing:
            print(f"{scenario.name:40} skipped: {', '.join(missing)} missing")
            continue
        runs = [time_once(scenario.command, scenario.marker, args.limit)
                for _ in range(args.runs)]
        markers = [r.to_marker for r in runs if r.to_marker is not None]
        marker = f"{statistics.median(markers):.3f}" if markers else "never"
        exit_time = statistics.median(r.to_exit for r in runs)
        statuses = sorted({r.status for r in runs})
        print(f"{scenario.name:40} {marker:>14} {exit_time:12.3f}  {statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
