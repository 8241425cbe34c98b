#!/usr/bin/env python3
"""Virtio-block benchmark: pyvmm and QEMU -M microvm, raw and qcow2, side by side in one run.

Disks compared (the same image data each time):

  pyvmm raw         pyvmm's own in-process virtio-block on a raw file
  pyvmm qsd raw     pyvmm, the raw file served by qemu-storage-daemon (backend=qsd)
  pyvmm qsd qcow2   pyvmm, the qcow2 served by qemu-storage-daemon (vhost-user-blk)
  QEMU raw          QEMU's virtio-blk-device on the raw file
  QEMU qcow2        QEMU's virtio-blk-device on the qcow2
  QEMU vub qcow2    QEMU's vhost-user-blk on the same qemu-storage-daemon export
  NAME raw          with --baseline [NAME=]DIR (NAME "before" if not given; repeatable):
  NAME qsd qcow2    the raw file in-process, the qcow2 through the daemon, DIR's pyvmm

Two guests:

* ``--guest tiny`` (default; runs on a kvm_pvm host too): the ``vbench`` tiny
  guest issues sequential reads or writes of a given size, polling the used
  ring, without touching the data: the VMM's data path alone.  Each figure is
  (wall time of a run doing the work) minus (the same run with ``bench=none``),
  median over --runs, so boot and exit cancel out.
* ``--guest linux`` (hardware KVM: the rig): Debian's cloud kernel runs fio
  (Debian's ``fio`` and its libraries, packed into an initramfs beside the
  cloud guest's) on ``/dev/vda`` with ``O_DIRECT`` and libaio: sequential
  1 MiB reads and writes (depth 4), 4 KiB random reads at depth 1 and 16,
  ``--runtime`` seconds each.  fio's own figures, median over --runs boots.

Usage: python3 bench/virtio_io.py [--guest tiny|linux] [--runs 3] [--scale 1.0]
                                  [--configs A,B] [--baseline [NAME=]DIR]...
       python3 scripts/rig.py -- python3 bench/virtio_io.py --guest linux --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the cpio writer of this checkout
from pyvmm.command.initramfs.cpio import CpioWriter  # noqa: E402

OUT = REPO / "images" / "out"
TINY = OUT / "tiny"
QEMU = shutil.which("qemu-system-x86_64")
QSD = shutil.which("qemu-storage-daemon")
QEMU_IMG = shutil.which("qemu-img")
FIO = shutil.which("fio")
DISK_SIZE = 256 << 20
MEMORY = "1G"


@dataclass(frozen=True)
class Workload:
    name: str
    bench: str
    bs: int
    total: int
    depth: int = 1


TINY_WORKLOADS = (
    Workload("seq read 1 MiB", "read", 1 << 20, 4 << 30, depth=4),
    Workload("seq write 1 MiB", "write", 1 << 20, 2 << 30, depth=4),
    Workload("seq read 4 KiB", "read", 4096, 64 << 20, depth=16),
    Workload("seq write 4 KiB", "write", 4096, 64 << 20, depth=16),
    Workload("latency 4 KiB read, depth 1", "read", 4096, 16 << 20, depth=1),
    Workload("console 4 KiB writes", "console", 4096, 32 << 20, depth=1),
)

#: fio jobs: name, --rw, --bs, --iodepth, and the figure reported (MB/s or IOPS).
FIO_JOBS = (
    ("seq read 1 MiB, depth 4", "read", "1M", 4, "MB/s"),
    ("seq write 1 MiB, depth 4", "write", "1M", 4, "MB/s"),
    ("rand read 4 KiB, depth 1", "randread", "4k", 1, "IOPS"),
    ("rand read 4 KiB, depth 16", "randread", "4k", 16, "IOPS"),
)


@dataclass(frozen=True)
class Disks:
    raw: str
    qcow2: str
    vub_socket: str  # qemu-storage-daemon's export of the qcow2, for QEMU's vhost-user-blk


@dataclass(frozen=True)
class Guest:
    """What the VMMs boot: kernel (bzImage for pyvmm, ELF or bzImage for QEMU), initrd,
    command line; the console is hvc0 or the UART."""
    pyvmm_kernel: str
    qemu_kernel: str
    initrd: str | None
    append: str
    hvc0: bool


def pyvmm_command(guest: Guest, disk: str, options: str = "") -> list[str]:
    command = [sys.executable, "-m", "pyvmm", "run", "-k", guest.pyvmm_kernel, "-m", MEMORY,
               "--drive", f"path={disk}{options}", "-a", guest.append, "--timeout", "900"]
    if guest.initrd:
        command += ["-i", guest.initrd]
    if guest.hvc0:
        command += ["--virtio-announce", "acpi"]
    return command


def qemu_command(guest: Guest, drive: list[str]) -> list[str]:
    machine = "microvm,x-option-roms=off,rtc=off" + ("" if guest.hvc0 else ",acpi=off")
    command = [QEMU or "qemu-system-x86_64", "-M", machine, "-enable-kvm",
               "-cpu", "host" if guest.hvc0 else "host,-cx16,-xsave,-arch-capabilities",
               "-m", MEMORY, "-nographic", "-no-reboot", "-nodefaults",
               "-global", "virtio-mmio.force-legacy=false", *drive,
               "-kernel", guest.qemu_kernel, "-append", guest.append]
    if guest.initrd:
        command += ["-initrd", guest.initrd]
    if guest.hvc0:
        command += ["-chardev", "stdio,id=con", "-device", "virtio-serial-device",
                    "-device", "virtconsole,chardev=con"]
    else:
        # The tiny guest writes its console workload to a virtio console of its own.
        command += ["-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                    "-device", "virtio-serial-device", "-chardev",
                    "file,id=con0,path=/dev/null", "-device", "virtconsole,chardev=con0"]
    return command


def qemu_blk(path: str, fmt: str) -> list[str]:
    return ["-drive", f"id=d0,file={path},format={fmt},if=none,cache=writeback",
            "-device", "virtio-blk-device,drive=d0"]


def qemu_vub(socket_path: str) -> list[str]:
    return ["-object", f"memory-backend-memfd,id=mem,size={MEMORY},share=on",
            "-machine", "memory-backend=mem",
            "-chardev", f"socket,id=vub,path={socket_path}",
            "-device", "vhost-user-blk,chardev=vub,num-queues=1"]


#: Each disk configuration: its name and how to make the command for a guest.
CONFIGS: dict[str, Callable[[Guest, Disks], list[str]]] = {
    "pyvmm raw": lambda g, d: pyvmm_command(g, d.raw),
    "pyvmm qsd raw": lambda g, d: pyvmm_command(g, d.raw, ",backend=qsd"),
    "pyvmm qsd qcow2": lambda g, d: pyvmm_command(g, d.qcow2),
    "QEMU raw": lambda g, d: qemu_command(g, qemu_blk(d.raw, "raw")),
    "QEMU qcow2": lambda g, d: qemu_command(g, qemu_blk(d.qcow2, "qcow2")),
    "QEMU vub qcow2": lambda g, d: qemu_command(g, qemu_vub(d.vub_socket)),
}
#: --baseline: each other pyvmm checkout (PYTHONPATH) by its name; "NAME raw" and
#: "NAME qsd qcow2" run it.
BASELINES: dict[str, str] = {}


def baseline_of(config: str) -> str | None:
    """The checkout a configuration runs: a baseline's for a baseline's one, else None
    (this one).  Run from there: ``python -m`` puts its working directory ahead of
    PYTHONPATH, so from this checkout it would import this checkout's pyvmm."""
    return BASELINES.get(config.split()[0])


#: --limit: seconds one boot may take (a hung one then fails with its console's tail).
LIMIT = [600.0]


def run(command: list[str], marker: bytes, checkout: str | None = None) -> tuple[float, str]:
    """Run ``command`` with ``checkout``'s pyvmm (None: this one's)."""
    env = None if checkout is None else dict(os.environ, PYTHONPATH=checkout)
    start = time.monotonic()
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              cwd=checkout or REPO, env=env, timeout=LIMIT[0])
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{command[0]} ran past --limit {LIMIT[0]:g} s:\n"
                           f"{(exc.stdout or b'')[-3000:].decode(errors='replace')}"
                           f"{(exc.stderr or b'')[-2000:].decode(errors='replace')}") from None
    elapsed = time.monotonic() - start
    output = proc.stdout.decode(errors="replace")
    if marker not in proc.stdout:
        raise RuntimeError(f"{command[0]} run failed (status {proc.returncode}):\n"
                           f"{output[-3000:]}{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed, output


def make_disks(tmp: str) -> Disks:
    raw = os.path.join(tmp, "bench.raw")
    with open(raw, "wb") as image:
        image.write(os.urandom(1 << 20) * (DISK_SIZE >> 20))  # real blocks, not holes
    qcow2 = os.path.join(tmp, "bench.qcow2")
    subprocess.run([QEMU_IMG or "qemu-img", "convert", "-O", "qcow2", raw, qcow2], check=True)
    return Disks(raw, qcow2, os.path.join(tmp, "vub.sock"))


class VubDaemon:
    """qemu-storage-daemon exporting the qcow2 to QEMU's vhost-user-blk (a second image
    copy: pyvmm's own daemon holds the first's write lock while it runs)."""

    def __init__(self, disks: Disks, tmp: str) -> None:
        copy = os.path.join(tmp, "vub.qcow2")
        shutil.copyfile(disks.qcow2, copy)
        self.proc = subprocess.Popen([
            QSD or "qemu-storage-daemon",
            "--blockdev", f"driver=file,node-name=file0,filename={copy}",
            "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--export", f"type=vhost-user-blk,id=e0,node-name=disk0,writable=on,"
                        f"addr.type=unix,addr.path={disks.vub_socket}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not os.path.exists(disks.vub_socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-storage-daemon for QEMU's vhost-user-blk did not start")
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def tiny_guest(work: Workload | None) -> Guest:
    args = "bench=none" if work is None else \
        f"bench={work.bench} bs={work.bs} total={work.total} depth={work.depth}"
    return Guest(str(TINY / "vbench.bzImage"), str(TINY / "vbench.elf"), None,
                 f"console=ttyS0 {args}", hvc0=False)


def bench_tiny(configs: list[str], disks: Disks, runs: int, scale: float) -> None:
    for needed in ("vbench.bzImage", "vbench.elf"):
        if not (TINY / needed).exists():
            sys.exit(f"{TINY / needed} is missing: run 'bash images/build.sh tiny'")

    def seconds(config: str, work: Workload | None) -> float:
        return statistics.median(run(CONFIGS[config](tiny_guest(work), disks),
                                     b"vbench: done", baseline_of(config))[0]
                                 for _ in range(runs))
    baselines = {config: seconds(config, None) for config in configs}
    print("baseline (boot + exit, bench=none): " +
          ", ".join(f"{config} {t:.3f} s" for config, t in baselines.items()))
    print(f"{'MB/s (IOPS)':30}" + "".join(f"{config:>22}" for config in configs))
    for work in TINY_WORKLOADS:
        work = Workload(work.name, work.bench, work.bs, int(work.total * scale), work.depth)
        line = f"{work.name:30}"
        for config in configs:
            elapsed = max(seconds(config, work) - baselines[config], 1e-6)
            cell = f"{work.total / elapsed / 1e6:.1f} ({work.total / work.bs / elapsed:.0f})"
            line += f"{cell:>22}"
        print(line, flush=True)


FIO_SCRIPT = """#!/bin/sh
# fio on /dev/vda, each job's JSON between markers on the console.
fio() {{ /fio/lib/ld-linux-x86-64.so.2 --library-path /fio/lib /fio/fio "$@"; }}
for job in {jobs}; do
    set -- $(echo "$job" | tr : ' ')
    echo "FIO-BEGIN $1"
    fio --name="$1" --filename=/dev/vda --direct=1 --ioengine=libaio --rw="$2" \\
        --bs="$3" --iodepth="$4" --time_based --runtime={runtime} --ramp_time=1 \\
        --size={size} --output-format=json
    echo "FIO-END $1"
done
echo fio-done
"""


def fio_initrd(tmp: str, runtime: int) -> str:
    """The cloud guest's initramfs with fio, its libraries and the job script appended."""
    if FIO is None:
        sys.exit("no fio: apt-get install fio")
    base = OUT / "cloud" / "initramfs.cpio.gz"
    if not base.exists():
        sys.exit(f"{base} is missing: run 'bash images/build.sh cloud'")
    libraries = subprocess.run(["ldd", FIO], check=True, capture_output=True,
                               text=True).stdout
    archive = CpioWriter()
    for directory in ("fio", "fio/lib"):
        archive.directory(directory)
    archive.file("fio/fio", Path(FIO).read_bytes(), mode=0o755)
    for match in re.finditer(r"(?:=> )?(/\S+) \(0x", libraries):
        library = Path(match.group(1))
        archive.file(f"fio/lib/{library.name}", library.resolve().read_bytes(), mode=0o755)
    jobs = " ".join(f"{i}:{rw}:{bs}:{depth}" for i, (_n, rw, bs, depth, _u)
                    in enumerate(FIO_JOBS))
    archive.file("fio.sh", FIO_SCRIPT.format(jobs=jobs, runtime=runtime,
                                             size=DISK_SIZE).encode(), mode=0o755)
    data = base.read_bytes()
    data += bytes(-len(data) % 4)  # each archive of an initramfs starts 4-byte aligned
    path = os.path.join(tmp, "fio-initramfs.cpio")
    Path(path).write_bytes(data + archive.finish())
    return path


def fio_figures(output: str) -> list[float]:
    """Each job's MB/s or IOPS, as its FIO_JOBS entry says, from fio's JSON."""
    figures = []
    for index, (_name, rw, _bs, _depth, unit) in enumerate(FIO_JOBS):
        match = re.search(rf"FIO-BEGIN {index}\r?\n(.*?)FIO-END {index}", output, re.S)
        if not match:
            raise RuntimeError(f"no fio output for job {index}:\n{output[-3000:]}")
        text = match.group(1).replace("\r", "")
        result = json.loads(text[text.index("{"):text.rindex("}") + 1])["jobs"][0]
        side = result["write" if "write" in rw else "read"]
        figures.append(side["bw_bytes"] / 1e6 if unit == "MB/s" else side["iops"])
    return figures


def bench_linux(configs: list[str], disks: Disks, runs: int, runtime: int, tmp: str) -> None:
    kernel = OUT / "cloud" / "vmlinuz"
    guest = Guest(str(kernel), str(kernel), fio_initrd(tmp, runtime),
                  "console=hvc0 quiet pyvmm.run=sh,/fio.sh", hvc0=True)
    results: dict[str, list[list[float]]] = {config: [] for config in configs}
    for _ in range(runs):  # interleaved: each round boots every configuration once
        for config in configs:
            print(f"{time.strftime('%H:%M:%S')} {config} ...", file=sys.stderr, flush=True)
            try:
                _, output = run(CONFIGS[config](guest, disks), b"fio-done",
                                baseline_of(config))
                results[config].append(fio_figures(output))
            except RuntimeError as exc:  # the others' figures still come
                print(f"{config}: failed: {exc}", file=sys.stderr, flush=True)
                continue
            # Each boot's figures as they come: a session cut short still has them.
            print(f"{config}: " + ", ".join(f"{figure:.1f}" for figure in
                                            results[config][-1]), flush=True)
    print(f"{'fio, median of ' + str(runs):30}" + "".join(f"{c:>18}" for c in configs))
    for index, (name, _rw, _bs, _depth, unit) in enumerate(FIO_JOBS):
        line = f"{name + ' ' + unit:30}"
        for config in configs:
            figures = [r[index] for r in results[config]]
            line += f"{statistics.median(figures):18.1f}" if figures else f"{'-':>18}"
        print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", choices=("tiny", "linux"), default="tiny")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="tiny guest: multiply the data sizes")
    parser.add_argument("--runtime", type=int, default=5, help="linux guest: seconds per job")
    parser.add_argument("--limit", type=float, default=LIMIT[0],
                        help="seconds one boot may take")
    parser.add_argument("--configs",
                        help=f"which disks, comma-separated (known: {', '.join(CONFIGS)}, "
                        "'NAME raw' and 'NAME qsd qcow2' of each baseline; default all)")
    parser.add_argument("--baseline", metavar="[NAME=]DIR", action="append", default=[],
                        help="another pyvmm checkout: its raw disk as 'NAME raw', its qcow2 "
                        "through the daemon as 'NAME qsd qcow2' (NAME: before); repeatable")
    args = parser.parse_args()
    LIMIT[0] = args.limit
    for baseline in args.baseline:
        name, _, directory = baseline.rpartition("=")
        name = name or "before"
        if name in BASELINES or f"{name} raw" in CONFIGS or " " in name:
            sys.exit(f"--baseline {baseline}: the name {name!r} is taken or has a space")
        BASELINES[name] = os.path.abspath(directory)
        CONFIGS[f"{name} raw"] = lambda g, d: pyvmm_command(g, d.raw)
        CONFIGS[f"{name} qsd qcow2"] = lambda g, d: pyvmm_command(g, d.qcow2)
    configs = [c.strip() for c in (args.configs or ",".join(CONFIGS)).split(",")]
    if unknown := [c for c in configs if c not in CONFIGS]:
        sys.exit(f"unknown configurations {unknown} (known: {', '.join(CONFIGS)})")
    missing = {"QEMU": QEMU, "qemu-img": QEMU_IMG, "qemu-storage-daemon": QSD}
    if [name for name, found in missing.items() if found is None]:
        sys.exit(f"needs {', '.join(n for n, f in missing.items() if f is None)}")
    with tempfile.TemporaryDirectory() as tmp:
        disks = make_disks(tmp)
        vub = VubDaemon(disks, tmp) if "QEMU vub qcow2" in configs else None
        try:
            if args.guest == "tiny":
                bench_tiny(configs, disks, args.runs, args.scale)
            else:
                bench_linux(configs, disks, args.runs, args.runtime, tmp)
        finally:
            if vub is not None:
                vub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
