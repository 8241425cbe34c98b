"""Real gdb against a real Linux guest under ``pyvmm run --gdb``, with timings.

Boots the minimal kernel (``images/out/linux/bzImage``, its ``vmlinux`` for
symbols) with a command that sleeps, attaches gdb to the *running* guest once
its /init has started, and prints gdb's transcript: threads, ``x/s
linux_banner``, ``jiffies``, ``stepi`` (RIP before and after, and the round
trip's time), then ``detach``; the guest then finishes and pyvmm's status is
printed.  ``--break`` instead sets ``hbreak`` (``--soft``: ``break``) on the
reboot syscall the guest's /init makes at its end, continues and reports
where it stopped.  Needs hardware KVM: run it in the rig, with its patched
QEMU (scripts/rig-qemu/build.sh): Debian's doesn't deliver the nested
guest's breakpoint traps, so there the guest powers off and gdb sees it exit.

    flock /tmp/pyvmm-rig.lock python3 scripts/rig.py -- python3 bench/gdb_session.py [--cpus 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images" / "out"


def timed(command: str, label: str) -> str:
    """A gdb command run from gdb's Python, its wall time printed after it."""
    return (f"python import time; t = time.perf_counter(); gdb.execute({command!r}); "
            f"print('{label}-seconds %.4f' % (time.perf_counter() - t))")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--sleep", type=int, default=15, help="how long the guest runs")
    parser.add_argument("--break", dest="breakpoint", action="store_true")
    parser.add_argument("--soft", action="store_true", help="with --break: break, not hbreak")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pyvmm-gdb-"))
    sock = directory / "gdb.sock"
    append = f"console=ttyS0 quiet pyvmm.run=sleep,{args.sleep}"
    vmm = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "-k", str(IMAGES / "linux/bzImage"),
         "-i", str(IMAGES / "initramfs.cpio.gz"), "-c", str(args.cpus), "-m", "512M",
         "-a", append, "--gdb", f"unix:{sock}", "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert vmm.stdout is not None
    start = time.monotonic()
    console = b""
    while b"pyvmm-init: ok" not in console:
        line = vmm.stdout.readline()
        if not line:
            print(console.decode(errors="replace"), vmm.communicate()[1].decode())
            return 1
        console += line
    print(f"guest /init running after {time.monotonic() - start:.1f} s", flush=True)
    commands = ["info threads", "x/s &linux_banner", "p/d *(unsigned long *)&jiffies",
                "info registers rip", "x/i $pc", timed("stepi", "stepi"), "info registers rip",
                "p/d *(unsigned long *)&jiffies"]
    if args.breakpoint:
        commands += [f"{'break' if args.soft else 'hbreak'} __x64_sys_reboot",
                     timed("continue", "continue"),
                     "info registers rip", "bt 1", "delete", "detach"]
    else:
        commands += [timed("detach", "detach")]
    gdb = ["gdb", "-batch", "-nx", "-ex", f"target remote {sock}"]
    for command in commands:
        gdb += ["-ex", command]
    attach = time.monotonic()
    session = subprocess.run(gdb + [str(IMAGES / "linux/vmlinux")], capture_output=True,
                             text=True, timeout=900)
    print(f"--- gdb ({time.monotonic() - attach:.1f} s) ---")
    print(session.stdout + session.stderr)
    out, err = vmm.communicate(timeout=900)
    console += out
    print("--- the guest's console, after attach ---")
    print(console.decode(errors="replace")[-600:])
    print("--- pyvmm's stderr ---")
    print(err.decode(errors="replace")[-1500:])
    print(f"pyvmm exit status {vmm.returncode}")
    directory.rmdir()
    return 0 if vmm.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
