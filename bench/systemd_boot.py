#!/usr/bin/env python3
"""A whole Debian system (systemd, udev, dbus, its own initramfs) booted from a
disk image to ``multi-user.target`` and powered off: pyvmm and QEMU microvm
side by side, interleaved, in one run.

The image is ``images/build.sh systemd`` (images/out/systemd/): its unit
``pyvmm-poweroff.service`` prints a marker once multi-user.target is reached
and powers off.  Per run: seconds from spawn to the kernel's banner, to
``Run /init`` (the kernel phase), to the marker (initramfs and user space:
the phase where systemd's and getty's writes go through the 8250 in
interrupt mode), and to exit; and pyvmm's ``--stats``: exits to Python by
kind and port.  ``--baseline DIR`` adds a second pyvmm checkout as a
"before" column; ``--format qcow2`` boots the qcow2 copy of the image
(pyvmm through qemu-storage-daemon, QEMU through its own block layer);
``--snapshot`` boots it under a throwaway overlay (pyvmm's ``snapshot=on``,
QEMU's ``-snapshot``), so that every boot, timed or not, is the image's
first: no warm-up boot then.
Needs hardware KVM: run it in the rig, where only ratios within one run
mean anything.

    flock /tmp/pyvmm-rig.lock python3 scripts/rig.py -- \\
        .venv/bin/python bench/systemd_boot.py [--runs 3] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the --stats reader of this checkout
from pyvmm.vcpu.stats import NO_EXIT_KINDS, read_json_stats  # noqa: E402

IMAGE = REPO / "images" / "out" / "systemd"
APPEND = "console=ttyS0 root=/dev/vda rw reboot=k panic=-1"
#: Console lines that end a phase: name, and the bytes that mark it.
MARKERS = (("banner", b"Linux version"), ("init", b"Run /init as init process"),
           ("multi-user", b"pyvmm-systemd: multi-user.target reached"))


@dataclass
class Run:
    at: dict[str, float] = field(default_factory=dict)
    to_exit: float = 0.0
    status: int | None = None
    stats: dict | None = None
    tail: bytes = b""


def commands(image_format: str, memory: str, python: str,
             snapshot: bool = False) -> dict[str, list[str]]:
    """The pyvmm and QEMU command lines: same kernel, initramfs, command line, disk, RAM."""
    disk = IMAGE / f"rootfs.{'img' if image_format == 'raw' else 'qcow2'}"
    kernel, initrd = IMAGE / "vmlinuz", IMAGE / "initrd.img"
    pyvmm = [python, "-m", "pyvmm", "run", "-k", str(kernel), "-i", str(initrd),
             "-a", APPEND, "-m", memory, "--virtio-announce", "acpi",
             "--drive", f"path={disk},format={image_format}{',snapshot=on' if snapshot else ''}",
             "--timeout", "900",
             "--stats=json"]
    qemu = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
            "-M", "microvm,x-option-roms=off,rtc=on,acpi=on", "-enable-kvm", "-cpu", "host",
            "-m", memory, "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", APPEND,
            "-drive", f"id=root,file={disk},format={image_format},if=none,cache=writeback",
            "-device", "virtio-blk-device,drive=root", *(["-snapshot"] if snapshot else [])]
    return {"pyvmm": pyvmm, "qemu": qemu}


def time_run(command: list[str], cwd: Path, limit: float) -> Run:
    """Spawn ``command``; when each marker first appears, and when it exits."""
    run = Run()
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    selector.register(proc.stderr, selectors.EVENT_READ)
    out, err = bytearray(), bytearray()
    while selector.get_map() and time.monotonic() - started < limit:
        for key, _ in selector.select(1.0):
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            if key.fileobj is proc.stderr:
                err += chunk
                continue
            out += chunk
            now = time.monotonic() - started
            for name, marker in MARKERS:
                if name not in run.at and marker in out[-len(chunk) - len(marker):]:
                    run.at[name] = now
    if proc.poll() is None:
        proc.kill()
    run.status = proc.wait()
    run.to_exit = time.monotonic() - started
    run.stats = read_json_stats(err.decode(errors="replace"))
    run.tail = bytes(out[-400:] + err[-400:])
    return run


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", default="1G")
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw")
    parser.add_argument("--snapshot", action="store_true",
                        help="boot under a throwaway overlay (snapshot=on, QEMU's -snapshot)")
    parser.add_argument("--baseline", metavar="DIR", help="another pyvmm checkout: 'before'")
    parser.add_argument("--limit", type=float, default=900, help="seconds per boot at most")
    args = parser.parse_args()
    if not (IMAGE / "stamp").exists():
        print("systemd_boot: no image: bash images/build.sh systemd", file=sys.stderr)
        return 2
    vmms = ["pyvmm", "qemu"] + (["before"] if args.baseline else [])
    cmds = commands(args.format, args.memory, sys.executable, args.snapshot)
    if not args.snapshot:
        # First boot of a fresh image commits its machine-id and presets: not timed.
        warm = time_run(cmds["pyvmm"], REPO, args.limit)
        print(f"# warm-up boot: status {warm.status} in {warm.to_exit:.1f} s", file=sys.stderr)
    runs: dict[str, list[Run]] = {vmm: [] for vmm in vmms}
    for round_ in range(args.runs):
        for vmm in vmms:
            cwd = Path(args.baseline) if vmm == "before" else REPO
            command = cmds["qemu" if vmm == "qemu" else "pyvmm"]
            env_note = ""
            if vmm == "before":  # its own pyvmm, not this checkout's
                command = [*command]
                os.environ["PYTHONPATH"], saved = str(cwd), os.environ.get("PYTHONPATH")
                env_note = f" (PYTHONPATH={cwd})"
            try:
                run = time_run(command, cwd, args.limit)
            finally:
                if vmm == "before":
                    if saved is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = saved
            runs[vmm].append(run)
            print(f"# round {round_ + 1} {vmm:6}{env_note} " + " ".join(
                f"{name} {fmt(run.at.get(name))}" for name, _ in MARKERS)
                + f" exit {run.to_exit:.1f} status {run.status}", file=sys.stderr, flush=True)
            if run.status != 0:
                print(f"# its output ended: {run.tail!r}", file=sys.stderr)
    overlay = " under a throwaway overlay" if args.snapshot else ""
    print(f"Debian bookworm + systemd from a {args.format} image{overlay}, medians of {args.runs} "
          "interleaved runs, seconds from spawn")
    print(f"{'vmm':6} {'banner':>7} {'kernel':>7} {'user space':>10} {'exit':>7} "
          f"{'vs qemu':>7} {'exits':>7}  exits to Python by kind and port (count)")
    qemu_exit = median([r.to_exit for r in runs["qemu"]])
    for vmm in vmms:
        rows = runs[vmm]
        banner = median([r.at["banner"] for r in rows if "banner" in r.at])
        init = median([r.at["init"] for r in rows if "init" in r.at])
        user = median([r.at["multi-user"] - r.at["init"] for r in rows
                       if "multi-user" in r.at and "init" in r.at])
        exit_ = median([r.to_exit for r in rows])
        ratio = f"{exit_ / qemu_exit:.2f}" if exit_ and qemu_exit else ""
        stats = [r.stats for r in rows if r.stats]
        exits = fmt(median([s["exits"] for s in stats])) if stats else ""
        top = ""
        if stats:
            counts: dict[str, list[float]] = {}
            for s in stats:
                for row in s["by_address"]:
                    if row["kind"] in NO_EXIT_KINDS:
                        continue
                    where = "" if row["address"] is None else f"@{row['address']:#x}"
                    counts.setdefault(f"{row['kind']}{where}", []).append(row["count"])
            best = sorted(counts.items(), key=lambda item: -statistics.median(item[1]))[:6]
            top = ", ".join(f"{name} {statistics.median(c):.0f}" for name, c in best)
        print(f"{vmm:6} {fmt(banner):>7} {fmt(init):>7} {fmt(user):>10} {fmt(exit_):>7} "
              f"{ratio:>7} {exits:>7}  {top}")
    return 0 if all(r.status == 0 for rows in runs.values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
