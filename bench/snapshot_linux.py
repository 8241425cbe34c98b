#!/usr/bin/env python3
"""Restoring a Linux shell against booting it, under pyvmm and QEMU (savevm/loadvm).

Runs where Linux reaches user space (hardware KVM: the rig).  The guest
(``--guest``) is our minimal kernel with the busybox initramfs, or Debian's
cloud kernel with its initramfs (its virtio modules loaded), ``quiet``, its
shell on ttyS0 at the prompt, with a raw (pyvmm) or qcow2 (QEMU, which keeps
its savevm state there) disk.
"To the first console answer" is from the call (or the process's spawn) to
the guest's answer to ``echo r$((6*7))``.  Reports medians of ``--runs``:

* pyvmm in-process: ``Machine(...)`` cold boot vs ``Machine.restore(snapshot)``;
* as processes: ``pyvmm run`` vs ``pyvmm run --restore``, QEMU microvm's cold
  boot vs ``-loadvm`` of a snapshot ``savevm`` took at the same prompt;
* RSS a clone adds to its process (anonymous and file-backed), 256 MiB and 1 GiB.

``--variants no-spare`` adds in-process restores made as an earlier pyvmm made
them (``restore_variants.py``: no spare VM), interleaved with the others, their order rotated from run to run (a restore right after a cold boot
shares the CPU with that VM's teardown); ``--rounds N`` restores each N times
per cold boot.

Usage: python3 bench/snapshot_linux.py [--runs 5] [--memory 256M 1G] [--no-qemu]
                                       [--in-process-only] [--guest minimal cloud]
                                       [--variants no-spare] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyvmm
from restore_variants import NAMES as VARIANTS, variant

REPO = Path(__file__).resolve().parents[1]
#: (kernel, initramfs) by ``--guest``: both inits start busybox's shell on the console.
GUESTS = {"minimal": (REPO / "images" / "out" / "linux" / "bzImage",
                      REPO / "images" / "out" / "initramfs.cpio.gz"),
          "cloud": (REPO / "images" / "out" / "cloud" / "vmlinuz",
                    REPO / "images" / "out" / "cloud" / "initramfs.cpio.gz")}
KERNEL, INITRD = GUESTS["minimal"]
APPEND = "console=ttyS0 quiet"
PROMPT = b"/ # "
ASK = b"echo r$((6*7))\n"
ANSWER = b"r42"


def answer_in_process(vm: pyvmm.Machine, started: float, boot: bool) -> float:
    vm.start()
    if boot:
        vm.console.expect(PROMPT, 300)
    vm.console.write(ASK)
    vm.console.expect(ANSWER, 300)
    return time.perf_counter() - started


def boot_config(memory: str, disk: Path) -> dict:
    return dict(kernel=str(KERNEL), initrd=str(INITRD), append=APPEND, memory=memory,
                drives=[str(disk)], timeout=600)


def cold_in_process(memory: str, disk: Path) -> float:
    started = time.perf_counter()
    vm = pyvmm.Machine(**boot_config(memory, disk))
    try:
        return answer_in_process(vm, started, boot=True)
    finally:
        vm.stop()


def restore_in_process(snapshot: Path, how: str = "spare") -> float:
    with variant(how):
        started = time.perf_counter()
        vm = pyvmm.Machine.restore(snapshot, snapshot=True)
    try:
        return answer_in_process(vm, started, boot=False)
    finally:
        vm.stop()


def answer_of_process(command: list[str], boot: bool, timeout: float = 300) -> float:
    """Spawn ``command`` (the guest's serial on its stdio) -> its answer on stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    try:
        if boot:
            while PROMPT not in seen:
                chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk or time.perf_counter() - started > timeout:
                    raise RuntimeError(f"{command[0]}: no prompt: {seen[-300:]!r}")
                seen += chunk
        proc.stdin.write(ASK)
        proc.stdin.flush()
        seen = b""
        while ANSWER not in seen.replace(b"$((6*7))", b""):
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk or time.perf_counter() - started > timeout:
                raise RuntimeError(f"{command[0]}: no answer: {seen[-300:]!r}")
            seen += chunk
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def pyvmm_process(memory: str, disk: Path, snapshot: Path | None) -> float:
    base = [sys.executable, "-m", "pyvmm", "run", "--timeout", "600"]
    if snapshot is not None:
        return answer_of_process(base + ["--restore", str(snapshot), "--snapshot"], boot=False)
    return answer_of_process(base + ["-k", str(KERNEL), "-i", str(INITRD), "-a", APPEND,
                                     "-m", memory, "--drive", str(disk)], boot=True)


def qemu_command(memory: str, qcow2: Path, monitor: Path | None = None,
                 loadvm: bool = False) -> list[str]:
    command = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off",
               "-enable-kvm", "-cpu", "host", "-m", memory, "-nodefaults", "-display", "none",
               "-no-reboot", "-serial", "stdio", "-kernel", str(KERNEL), "-initrd", str(INITRD),
               "-append", APPEND, "-drive", f"id=d0,file={qcow2},format=qcow2,if=none",
               "-device", "virtio-blk-device,drive=d0"]
    if monitor is not None:
        command += ["-monitor", f"unix:{monitor},server=on,wait=off"]
    if loadvm:
        command += ["-loadvm", "ready"]
    return command


def qemu_savevm(memory: str, qcow2: Path, monitor: Path) -> float:
    """Boot QEMU to the prompt and ``savevm ready``; the seconds savevm took."""
    proc = subprocess.Popen(qemu_command(memory, qcow2, monitor), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        seen = b""
        while PROMPT not in seen:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                raise RuntimeError(f"QEMU: no prompt: {seen[-300:]!r}")
            seen += chunk
        with socket.socket(socket.AF_UNIX) as hmp:
            hmp.connect(str(monitor))
            hmp.settimeout(600)
            greeting = b""
            while b"(qemu)" not in greeting:
                greeting += hmp.recv(4096)
            started = time.perf_counter()
            hmp.sendall(b"savevm ready\n")
            reply = b""
            while b"(qemu)" not in reply:
                reply += hmp.recv(4096)
            seconds = time.perf_counter() - started
            if b"rror" in reply:
                raise RuntimeError(f"QEMU savevm: {reply.decode(errors='replace').strip()}")
            hmp.sendall(b"quit\n")
            while hmp.recv(4096):  # QEMU drops a command whose connection closed first
                pass
        proc.wait(60)
        return seconds
    finally:
        proc.kill()
        proc.wait()


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def clone_rss(snapshot: Path) -> tuple[int, int]:
    """(anonymous, file-backed) KiB of RSS one answering clone adds to this process."""
    anon, file = status_kib("RssAnon"), status_kib("RssFile")
    vm = pyvmm.Machine.restore(snapshot, snapshot=True)
    try:
        answer_in_process(vm, time.perf_counter(), boot=False)
        return status_kib("RssAnon") - anon, status_kib("RssFile") - file
    finally:
        vm.stop()


def snapshot_at_prompt(memory: str, disk: Path, directory: Path) -> tuple[float, int]:
    vm = pyvmm.Machine(**boot_config(memory, disk))
    try:
        answer_in_process(vm, time.perf_counter(), boot=True)
        vm.console.expect(PROMPT, 60)
        info = vm.snapshot(directory, stop=True)
        vm.wait(60)
        return info.seconds, os.stat(directory / "memory.raw").st_blocks * 512
    finally:
        vm.stop()


def median(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", nargs="+", default=["256M", "1G"])
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--in-process-only", action="store_true",
                        help="only the in-process rows (no pyvmm run processes, no QEMU)")
    parser.add_argument("--guest", nargs="+", default=["minimal"], choices=tuple(GUESTS))
    parser.add_argument("--variants", nargs="*", default=[], choices=VARIANTS[1:],
                        help="in-process restores made as before, beside this pyvmm's")
    parser.add_argument("--rounds", type=int, default=1,
                        help="in-process restores of each kind per cold boot")
    args = parser.parse_args()
    for guest in args.guest:
        measure(guest, args)


def measure(guest: str, args: argparse.Namespace) -> None:
    global KERNEL, INITRD
    KERNEL, INITRD = GUESTS[guest]
    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-") as where:
        work = Path(where)
        for memory in args.memory:
            disk = work / f"disk-{memory}.img"
            disk.write_bytes(bytes(16 << 20))
            snap = work / f"snap-{memory}"
            pause, allocated = snapshot_at_prompt(memory, disk, snap)
            rows: dict[str, list[float]] = {name: [] for name in (
                "pyvmm cold boot, in-process", "pyvmm restore, in-process",
                "pyvmm run (process)", "pyvmm run --restore (process)",
                "QEMU cold boot (process)", "QEMU -loadvm (process)")}
            for how in args.variants:
                rows[f"pyvmm restore, in-process ({how})"] = []
            qcow2 = work / f"disk-{memory}.qcow2"
            savevm = None
            qemu = not args.no_qemu and not args.in_process_only
            if qemu:
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"],
                               check=True)
                try:
                    savevm = qemu_savevm(memory, qcow2, work / "hmp.sock")
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"QEMU's savevm failed, QEMU left out: {exc}", flush=True)
                    qemu = False
            kinds = ["spare", *args.variants]
            for run in range(args.runs):  # interleaved, so drifts in the host hit all alike
                rows["pyvmm cold boot, in-process"].append(cold_in_process(memory, disk))
                for _ in range(args.rounds):
                    for how in kinds[run % len(kinds):] + kinds[:run % len(kinds)]:
                        row = "pyvmm restore, in-process" + (f" ({how})" if how != "spare"
                                                             else "")
                        rows[row].append(restore_in_process(snap, how))
                if not args.in_process_only:
                    rows["pyvmm run (process)"].append(pyvmm_process(memory, disk, None))
                    rows["pyvmm run --restore (process)"].append(
                        pyvmm_process(memory, disk, snap))
                if qemu:
                    try:
                        rows["QEMU cold boot (process)"].append(answer_of_process(
                            qemu_command(memory, qcow2), boot=True))
                        rows["QEMU -loadvm (process)"].append(answer_of_process(
                            qemu_command(memory, qcow2, loadvm=True), boot=False))
                    except RuntimeError as exc:
                        print(f"QEMU run failed: {exc}", flush=True)
            anon, file = clone_rss(snap)
            print(f"\n== {memory} guest, {guest} Linux at its shell, median of {args.runs} "
                  f"(restores: {args.runs * args.rounds}) "
                  "(seconds to the first console answer) ==")
            for name, values in rows.items():
                if values:
                    print(f"{name:34} {median(values)}   (all: "
                          f"{' '.join(f'{v:.3f}' for v in values)})")
            cold, warm = (statistics.median(rows[name]) for name in (
                "pyvmm cold boot, in-process", "pyvmm restore, in-process"))
            print(f"restore / cold boot, in-process: {100 * warm / cold:.1f}%")
            for how in args.variants:
                warm = statistics.median(rows[f"pyvmm restore, in-process ({how})"])
                print(f"  ({how}) restore / cold boot:     {100 * warm / cold:.1f}%")
            if rows["pyvmm run (process)"]:
                cold, warm = (statistics.median(rows[name]) for name in (
                    "pyvmm run (process)", "pyvmm run --restore (process)"))
                print(f"restore / cold boot, processes:  {100 * warm / cold:.1f}%")
            if rows["QEMU -loadvm (process)"]:
                cold, warm = (statistics.median(rows[name]) for name in (
                    "QEMU cold boot (process)", "QEMU -loadvm (process)"))
                print(f"QEMU loadvm / QEMU cold boot:    {100 * warm / cold:.1f}%")
            print(f"pyvmm snapshot: guest paused {pause * 1000:.0f} ms, memory file "
                  f"{allocated >> 20} MiB allocated; QEMU savevm "
                  f"{'-' if savevm is None else f'{savevm:.2f} s'}")
            print(f"RSS one clone adds: {anon} KiB anonymous, {file} KiB file-backed "
                  f"(of {memory} guest RAM)")


if __name__ == "__main__":
    main()
