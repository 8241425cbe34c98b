#!/usr/bin/env python3
"""Boot one Linux guest again and again under pyvmm and QEMU microvm, interleaved.

    python3 scripts/rig.py --job DIR -- python3 bench/rig_soak.py [--boots 10] [--cpus 2]
        [--guest cloud|minimal] [--no-qemu] [--append 'nokaslr']

Run it where /dev/kvm is hardware KVM (inside the rig).  Each round boots the
guest under pyvmm, then under QEMU (same kernel, initrd and command line, as
the cross-check tests do) and classifies each boot: ok, guest triple fault
(pyvmm exit 8; QEMU has no such status, its guest just resets and, with
-no-reboot, exits 0 without the init's marker), timeout/hang, or other.  A
pyvmm boot that triple-faults or times out leaves its dump in
``$RIG_JOB`` (or ``--keep``), to be read with ``pyvmm inspect``; every boot
that is not ok leaves its console and stderr there too.  The last
line is ``SOAK {json}``, which bench/rig_health.py adds up over sessions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyvmm.exitstatus import ExitStatus  # noqa: E402
from tests.linux.guests import (CLOUD, HUNG, MINIMAL, QEMU_TRIPLE_FAULT, Boot, Guest,  # noqa: E402
                                boot_once, is_qemu, pyvmm_args, qemu_args)

GUESTS = {"cloud": CLOUD, "minimal": MINIMAL}


def classify(boot: Boot, vmm: str) -> str:
    if boot.status == HUNG:
        return "hang"
    if "pyvmm-init: exit 0" in boot.output and boot.status == 0:
        return "ok"
    if QEMU_TRIPLE_FAULT in boot.stderr:
        return "reset"  # -no-reboot: a triple fault (or reboot) ends QEMU with 0
    if vmm == "pyvmm" and boot.status == ExitStatus.GUEST_CRASHED:
        return "triple fault"
    if vmm == "pyvmm" and boot.status == ExitStatus.TIMEOUT:
        return "timeout"
    return f"exit {boot.status}"


def boot_and_keep(command: list[str], timeout: float, keep: Path) -> tuple[str, float, str]:
    """Boot once; a boot that is not ok leaves its console and stderr in ``keep``."""
    vmm = "qemu" if is_qemu(command) else "pyvmm"
    boot = boot_once(command, timeout=timeout, cwd=REPO)
    outcome = classify(boot, vmm)
    if outcome == "ok":
        return outcome, boot.seconds, ""
    keep.with_suffix(".console").write_text(boot.output)
    keep.with_suffix(".stderr").write_text(boot.stderr)
    return outcome, boot.seconds, (boot.stderr or boot.output)[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=10, help="rounds (one boot per VMM each)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--guest", choices=GUESTS, default="cloud")
    parser.add_argument("--append", default="", help="more kernel arguments")
    parser.add_argument("--no-qemu", action="store_true")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per boot")
    parser.add_argument("--keep", type=Path, default=Path(os.environ.get("RIG_JOB", ".")),
                        help="where failed boots leave dumps and consoles (default $RIG_JOB)")
    args = parser.parse_args()
    guest: Guest = GUESTS[args.guest]
    run = "nproc"
    tally: dict[str, collections.Counter[str]] = {"pyvmm": collections.Counter(),
                                                  "qemu": collections.Counter()}
    times: dict[str, list[float]] = {"pyvmm": [], "qemu": []}
    session = f"{os.getpid()}"
    for round_ in range(1, args.boots + 1):
        dump = args.keep / f"pyvmm-{session}-{round_}.core"
        commands = {"pyvmm": pyvmm_args(guest, run, cpus=args.cpus, extra_append=args.append,
                                        options=("--timeout", str(args.timeout - 10),
                                                 "--dump", str(dump), "--dump-on", "panic",
                                                 "--dump-on", "timeout"))}
        if not args.no_qemu:
            qemu = qemu_args(guest, run, cpus=args.cpus)
            qemu[qemu.index("-append") + 1] = guest.append(run, args.append)
            commands["qemu"] = qemu
        for vmm, command in commands.items():
            outcome, seconds, detail = boot_and_keep(
                command, args.timeout, args.keep / f"{vmm}-{session}-{round_}")
            tally[vmm][outcome] += 1
            if outcome == "ok":
                times[vmm].append(seconds)
            print(f"round {round_} {vmm}: {outcome} in {seconds:.1f} s"
                  + (f": {detail.strip().splitlines()[-1] if detail.strip() else ''}"
                     if outcome != "ok" else ""), flush=True)
    summary = {vmm: {"outcomes": dict(counts),
                     "median_ok_s": round(statistics.median(times[vmm]), 2) if times[vmm] else None}
               for vmm, counts in tally.items() if counts}
    print("SOAK " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
