"""Real gdb against a real Linux guest under ``pyvmm run --gdb`` and QEMU ``-gdb``, timed.

Boots the minimal kernel (``images/out/linux/bzImage``, its ``vmlinux`` for
symbols) with a command that sleeps, attaches gdb to the *running* guest once
its /init has started, and runs one session: threads, ``x/s linux_banner``,
``jiffies``, a breakpoint (``hbreak``; ``--soft``: ``break``) on the reboot
syscall that /init makes at its end, ``continue`` to it; then the figures:
``continue`` to a breakpoint one instruction on (``break *ADDR``, the one it
stands on deleted: Z0, vCont, the stop, gdb's reads of registers and stack),
``--rounds`` times along ``__x64_sys_reboot``'s first instructions, and
``stepi`` ``--rounds`` times; ``detach``, and the guest finishes.  The same
session runs under QEMU (``--vmm both``, the default) in the same run, and
the two transcripts are printed side by side with the figures (medians).
Needs hardware KVM: run it in the rig, with its patched QEMU
(scripts/rig-qemu/build.sh): Debian's doesn't deliver the nested guest's
breakpoint traps, so there the guest powers off and gdb sees it exit.

    flock /tmp/pyvmm-rig.lock python3 scripts/rig.py -- python3 bench/gdb_session.py
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images" / "out"
#: __x64_sys_reboot's first instructions are four straight-line moves (then a jmp):
#: the offsets continue-to-breakpoint walks.
REBOOT_OFFSETS = (4, 7, 10, 13)
COLUMN = 64


def timed(command: str, label: str) -> str:
    """A gdb command run from gdb's Python, its wall time printed after it."""
    return (f"python import time; t = time.perf_counter(); gdb.execute({command!r}); "
            f"print('{label}-seconds %.4f' % (time.perf_counter() - t))")


def commands(soft: bool, rounds: int) -> list[str]:
    steps = [f"break *(__x64_sys_reboot + {offset})" for offset in REBOOT_OFFSETS[:rounds]]
    out = ["info threads", "x/s &linux_banner", "p/d *(unsigned long *)&jiffies",
           f"{'break' if soft else 'hbreak'} __x64_sys_reboot", "continue", "bt 1", "delete"]
    for step in steps:
        out += [step, timed("continue", "continue"), "delete"]
    out += ["info registers rip"]
    out += [timed("stepi", "stepi") for _ in range(rounds)]
    return out + ["info registers rip", "detach"]


@dataclass
class Run:
    name: str
    transcript: str
    status: int
    attach_after: float

    def seconds(self, label: str) -> list[float]:
        return [float(s) for s in re.findall(rf"^{label}-seconds (\S+)$", self.transcript,
                                             re.MULTILINE)]


def vmm_command(vmm: str, sock: Path, cpus: int, sleep: int) -> list[str]:
    append = f"console=ttyS0 quiet pyvmm.run=sleep,{sleep}"
    kernel, initrd = str(IMAGES / "linux/bzImage"), str(IMAGES / "initramfs.cpio.gz")
    if vmm == "pyvmm":
        return [sys.executable, "-m", "pyvmm", "run", "-k", kernel, "-i", initrd,
                "-c", str(cpus), "-m", "512M", "-a", append, "--gdb", f"unix:{sock}",
                "--timeout", "600"]
    return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm",
            "-cpu", "host", "-m", "512M", "-smp", str(cpus), "-display", "none",
            "-no-reboot", "-nodefaults", "-kernel", kernel, "-initrd", initrd,
            "-append", append, "-serial", "stdio", "-gdb", f"unix:{sock},server=on,wait=off"]


def session(vmm: str, args: argparse.Namespace) -> Run:
    directory = Path(tempfile.mkdtemp(prefix="pyvmm-gdb-"))
    sock = directory / "gdb.sock"
    proc = subprocess.Popen(vmm_command(vmm, sock, args.cpus, args.sleep),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO)
    assert proc.stdout is not None
    try:
        start = time.monotonic()
        console = b""
        while b"pyvmm-init: ok" not in console:
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                return Run(vmm, console.decode(errors="replace"), proc.returncode, 0.0)
            console += line
        attach_after = time.monotonic() - start
        gdb = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", f"target remote {sock}"]
        for command in commands(args.soft, args.rounds):
            gdb += ["-ex", command]
        result = subprocess.run(gdb + [str(IMAGES / "linux/vmlinux")], capture_output=True,
                                text=True, timeout=900)
        proc.stdout.read()
        proc.wait(timeout=300)
        return Run(vmm, result.stdout + result.stderr, proc.returncode, attach_after)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)
        directory.rmdir()


def side_by_side(runs: list[Run]) -> str:
    columns = [run.transcript.expandtabs().splitlines() for run in runs]
    lines = [" | ".join(run.name.ljust(COLUMN) for run in runs),
             "-+-".join("-" * COLUMN for _ in runs)]
    for row in itertools.zip_longest(*columns, fillvalue=""):
        lines.append(" | ".join(cell[:COLUMN].ljust(COLUMN) for cell in row).rstrip())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmm", choices=("pyvmm", "qemu", "both"), default="both")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--sleep", type=int, default=10,
                        help="how long the guest sleeps before its reboot syscall")
    parser.add_argument("--soft", action="store_true", help="break, not hbreak, on the syscall")
    parser.add_argument("--rounds", type=int, default=4, choices=range(1, 5),
                        help="timed continues and stepis (at most 4)")
    args = parser.parse_args()
    runs = [session(vmm, args) for vmm in (("pyvmm", "qemu") if args.vmm == "both"
                                           else (args.vmm,))]
    print(side_by_side(runs))
    print()
    print(f"{'':34}" + "".join(f"{run.name:>12}" for run in runs))
    print(f"{'/init running, gdb attaches (s)':34}"
          + "".join(f"{run.attach_after:12.1f}" for run in runs))
    for label, what in (("continue", "continue to breakpoint (ms)"), ("stepi", "stepi (ms)")):
        cells = []
        for run in runs:
            values = run.seconds(label)
            cells.append(f"{statistics.median(values) * 1000:12.1f}" if values else f"{'-':>12}")
        print(f"{what + ', median':34}" + "".join(cells))
    print(f"{'VMM exit status':34}" + "".join(f"{run.status:12d}" for run in runs))
    return 0 if all(run.status == 0 and run.seconds("stepi") for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
