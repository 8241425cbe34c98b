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

``--rig`` is for a host with hardware KVM (run it inside the SVM rig,
``scripts/rig.sh`` or /work/shared/rig/svm-rig.sh): pyvmm and QEMU microvm,
interleaved run by run, boot the minimal kernel and Debian's cloud kernel
(``images/build.sh cloud``) with the initramfs' ``/init`` running ``true``,
with 1 and 2 vCPUs, verbose and ``quiet``; it reports the median seconds from
spawn to the banner, to ``/init`` and to exit, and pyvmm's ``--stats`` (start-up,
exits by kind).  ``--baseline DIR`` adds a second pyvmm checkout (a "before"
column).  Only ratios within one run mean anything under an emulated host.

Usage: python3 bench/boot_time.py [--runs 5] [--quiet-kernel]
       python3 bench/boot_time.py --rig [--runs 5] [--baseline DIR] [--json OUT]
       python3 bench/boot_time.py --exit-latency [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import site
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the --stats reader of this checkout
from pyvmm.vcpu.stats import read_json_stats  # noqa: E402
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


# -- --rig: hardware KVM, pyvmm and QEMU interleaved -----------------------------------

#: What each rig run watches for on the console, in boot order.
RIG_MARKERS = {"banner": b"Linux version", "init": b"pyvmm-init: ok",
               "done": b"pyvmm-init: exit"}


@dataclass
class RigRun:
    """One boot: seconds from spawn to each marker seen, to exit; pyvmm's --stats."""

    at: dict[str, float]
    to_exit: float
    status: int
    stats: dict | None


def time_rig_run(command: list[str], cwd: Path, limit: float,
                 env: dict[str, str] | None = None) -> RigRun:
    """Spawn ``command``, stamp the markers on stdout, collect --stats=json from stderr."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    open_fds, seen, errors, at = {out_fd, err_fd}, b"", b"", {}
    while open_fds:
        remaining = limit - (time.monotonic() - start)
        if remaining <= 0:
            proc.kill()
            break
        ready, _, _ = select.select(list(open_fds), [], [], remaining)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif fd == err_fd:
                errors += chunk
            else:
                now = time.monotonic() - start
                seen = (seen + chunk)[-4096:]
                for name, marker in RIG_MARKERS.items():
                    if name not in at and marker in seen:
                        at[name] = now
    status = proc.wait()
    to_exit = time.monotonic() - start
    return RigRun(at, to_exit, status, read_json_stats(errors.decode(errors="replace")))


@dataclass
class RigCase:
    kernel: str
    cpus: int
    quiet: bool

    @property
    def name(self) -> str:
        return f"{self.kernel} {self.cpus}cpu {'quiet' if self.quiet else 'verbose'}"


def rig_images(kernel: str) -> tuple[Path, Path]:
    if kernel == "minimal":
        return OUT / "linux" / "bzImage", OUT / "initramfs.cpio.gz"
    return OUT / "cloud" / "vmlinuz", OUT / "cloud" / "initramfs.cpio.gz"


def rig_commands(case: RigCase, memory: str) -> dict[str, list[str]]:
    """The pyvmm and QEMU command lines for one case: same kernel, initrd, cmdline, RAM.

    Both machines have a virtio console (QEMU: virtio-serial-device) and ACPI
    (QEMU microvm's acpi=on is also how the cloud kernel finds virtio-mmio).
    """
    kernel, initrd = rig_images(case.kernel)
    append = "console=ttyS0 reboot=k panic=-1 pyvmm.run=true" + (" quiet" if case.quiet else "")
    pyvmm_cmd = [sys.executable, "-m", "pyvmm", "run", "-k", str(kernel), "-i", str(initrd),
                 "-a", append, "-m", memory, "-c", str(case.cpus), "--timeout", "300",
                 "--stats=json"]
    if case.kernel == "cloud":
        pyvmm_cmd += ["--virtio-announce", "acpi"]
    qemu_cmd = [QEMU or "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=on",
                "-enable-kvm", "-cpu", "host", "-m", memory, "-smp", str(case.cpus),
                "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-device", "virtio-serial-device",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
    return {"pyvmm": pyvmm_cmd, "qemu": qemu_cmd}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def summarize(runs: list[RigRun]) -> dict:
    """Medians of the markers, exit and --stats figures over runs of one VMM and case."""
    result: dict = {name: _median([r.at[name] for r in runs if name in r.at])
                    for name in RIG_MARKERS}
    result["exit"] = _median([r.to_exit for r in runs])
    # From /init's last line (then sync, poweroff -f) to the VMM's exit.
    result["shutdown"] = _median([r.to_exit - r.at["done"] for r in runs if "done" in r.at])
    result["statuses"] = sorted({r.status for r in runs})
    stats = [r.stats for r in runs if r.stats]
    if stats:
        result["startup"] = _median([s["startup_s"]["first_kvm_run"] for s in stats])
        result["startup_cpu"] = {
            name: _median([s["startup_cpu_s"][name] for s in stats if name in s["startup_cpu_s"]])
            for name in stats[0]["startup_cpu_s"]}
        result["stopping"] = _median([s["stopping_s"] for s in stats if s.get("stopping_s")])
        result["exits"] = _median([s["exits"] for s in stats])
        kinds: dict[str, dict[str, float | None]] = {}
        for kind in sorted({k for s in stats for k in s["by_kind"]}):
            rows = [s["by_kind"][kind] for s in stats if kind in s["by_kind"]]
            kinds[kind] = {"count": _median([row["count"] for row in rows]),
                           "mean_us": _median([row["mean_us"] for row in rows])}
        result["by_kind"] = kinds
    return result


def rig_main(args: argparse.Namespace) -> int:
    vmms = (["pyvmm", "qemu"] + (["baseline"] if args.baseline else [])
            + (["pyvmm-S"] if args.no_pth else []))
    # pyvmm-S: the interpreter without site's .pth files (an editable install's import
    # finder, this host's own additions), as a regular install would start.
    no_pth_env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()))
    cases = [RigCase(kernel, cpus, quiet) for kernel in args.kernels.split(",")
             for cpus in (int(c) for c in args.cpus.split(",")) for quiet in (False, True)
             if ("quiet" if quiet else "verbose") in args.modes.split(",")]
    cases = [c for c in cases if all(p.exists() for p in rig_images(c.kernel))] or []
    if not cases or QEMU is None:
        print("rig: nothing to run (images or qemu-system-x86_64 missing)", file=sys.stderr)
        return 2
    runs: dict[tuple[str, str], list[RigRun]] = {}
    for round_ in range(args.runs):
        for case in cases:
            commands = rig_commands(case, args.memory)
            for vmm in vmms:  # interleaved: every VMM once per case per round
                cwd = Path(args.baseline) if vmm == "baseline" else REPO
                command = commands["qemu" if vmm == "qemu" else "pyvmm"]
                if vmm == "pyvmm-S":
                    command = [command[0], "-S", *command[1:]]
                run = time_rig_run(command, cwd, args.limit,
                                   no_pth_env if vmm == "pyvmm-S" else None)
                runs.setdefault((case.name, vmm), []).append(run)
                print(f"# round {round_ + 1} {case.name:22} {vmm:8} " + " ".join(
                    f"{name} {_fmt(run.at.get(name))}" for name in RIG_MARKERS)
                    + f" exit {run.to_exit:.2f} status {run.status}", file=sys.stderr,
                    flush=True)
    summary = {f"{case}|{vmm}": summarize(r) for (case, vmm), r in runs.items()}
    print(f"medians of {args.runs} interleaved runs, seconds from spawn")
    print(f"{'case':22} {'vmm':8} {'banner':>7} {'/init':>7} {'exit':>7} {'init ratio':>10} "
          f"{'shutdown':>8} {'start-up':>8} {'exits':>7}  exits by kind (count, mean us)")
    for case in cases:
        qemu_init = summary[f"{case.name}|qemu"]["init"]
        for vmm in vmms:
            row = summary[f"{case.name}|{vmm}"]
            ratio = "" if row["init"] is None or not qemu_init else f"{row['init'] / qemu_init:.2f}"
            kinds = ", ".join(f"{kind} {v['count']:.0f} x {v['mean_us']:.0f}"
                              if v["mean_us"] else f"{kind} {v['count']:.0f}"
                              for kind, v in row.get("by_kind", {}).items())
            startup = f"{row['startup']:.3f}" if "startup" in row else ""
            exits = f"{row['exits']:.0f}" if "exits" in row else ""
            print(f"{case.name:22} {vmm:8} {_fmt(row['banner']):>7} {_fmt(row['init']):>7} "
                  f"{_fmt(row['exit']):>7} {ratio:>10} {_fmt(row['shutdown']):>8} "
                  f"{startup:>8} {exits:>7}  {kinds}"
                  + ("" if row["statuses"] == [0] else f"  status {row['statuses']}"))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"runs": args.runs, "summary": summary,
                       "raw": {f"{c}|{v}": [r.__dict__ for r in rs]
                               for (c, v), rs in runs.items()}}, stream, indent=1)
    return 0


# -- --exit-latency: from the guest's last line to the VMM's exit ------------------------

def exit_latency(runs: int) -> int:
    """The tiny ``exitcode`` guest prints a line and writes the debug-exit port at once:
    the time from that line to the VMM's exit is the VMM's own stopping time."""
    tiny = OUT / "tiny"
    commands = {"pyvmm": pyvmm("-k", str(tiny / "exitcode.bzImage"), "-a", "exitcode=3"),
                "qemu": QEMU_MICROVM + ["-kernel", str(tiny / "exitcode.elf"),
                                        "-append", "exitcode=3"]}
    if QEMU is None:
        del commands["qemu"]
    results: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, cwd=REPO)
            assert proc.stdout is not None
            seen, line_at = b"", None
            while chunk := os.read(proc.stdout.fileno(), 65536):
                seen += chunk
                if line_at is None and b"pyvmm-tiny: exit 3" in seen:
                    line_at = time.monotonic()
            proc.wait()
            if line_at is not None:
                results[name].append((time.monotonic() - line_at) * 1000)
    for name, values in results.items():
        if values:
            print(f"{name:6} last line -> exit, ms: median {statistics.median(values):.1f}, "
                  f"max {max(values):.1f} over {len(values)} runs")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--limit", type=float, default=90.0, help="seconds per run")
    parser.add_argument("--quiet-kernel", action="store_true", help="add 'quiet' to Linux")
    parser.add_argument("--only", default="", help="run the scenarios whose name has this")
    parser.add_argument("--rig", action="store_true",
                        help="hardware KVM: pyvmm and QEMU interleaved, minimal and cloud kernels")
    parser.add_argument("--kernels", default="minimal,cloud", help="--rig: minimal,cloud")
    parser.add_argument("--cpus", default="1,2", help="--rig: vCPU counts")
    parser.add_argument("--modes", default="verbose,quiet", help="--rig: verbose,quiet")
    parser.add_argument("--memory", default="512M", help="--rig: guest RAM")
    parser.add_argument("--baseline", help="--rig: another pyvmm checkout to run alongside")
    parser.add_argument("--json", help="--rig: write every run and the medians here")
    parser.add_argument("--no-pth", action="store_true",
                        help="--rig: also run pyvmm with python -S (no .pth processing)")
    parser.add_argument("--exit-latency", action="store_true",
                        help="time from a tiny guest's last line to the VMM's exit")
    args = parser.parse_args()
    if args.exit_latency:
        return exit_latency(args.runs)
    if args.rig:
        return rig_main(args)
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
