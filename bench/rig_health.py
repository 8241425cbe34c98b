#!/usr/bin/env python3
"""How often the rig fails on its own: N sessions of scripts/rig.py, tallied.

    python3 bench/rig_health.py [--sessions 30] [--boots 1] [--busy] [--job DIR]
        [rig options] [-- COMMAND]

Each session runs COMMAND (default: boot Debian's cloud kernel with 2 vCPUs
under pyvmm ``--boots`` times, which exercises nested SVM the way the linux
tests do; the rig fails more often the longer a session runs) with
``--retries 0``, and is counted as ok, a failure of the command, or a failure
of the rig itself (exit 125, by the reason rig.py gives).  ``--busy`` keeps
one host core busy with a spinning process for the whole run, as a CI
machine running other work would.  A command that prints ``SOAK {json}``
lines (bench/rig_soak.py: pyvmm and QEMU boots interleaved, by outcome) has
them added up over the sessions; ``--job DIR`` keeps each session's job
directory (a triple fault's dump) as DIR/session-N.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ("python3 -m pyvmm run -k images/out/cloud/vmlinuz -i images/out/cloud/initramfs.cpio.gz"
           " -c 2 -a 'console=hvc0 quiet pyvmm.run=nproc' --timeout 300 </dev/null")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--boots", type=int, default=1,
                        help="guest boots per session of the default command")
    parser.add_argument("--busy", action="store_true", help="spin one host core meanwhile")
    parser.add_argument("--rig-option", action="append", default=[],
                        help="passed to rig.py, e.g. --rig-option=--tcg-threads=single")
    parser.add_argument("--job", type=Path, help="keep each session's job directory here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or [f"for i in $(seq {args.boots}); do {DEFAULT} || exit $?; done"]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    outcomes: collections.Counter[str] = collections.Counter()
    times = []
    soak: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    try:
        for session in range(args.sessions):
            start = time.monotonic()
            job = ["--job", str(args.job / f"session-{session + 1}")] if args.job else []
            proc = subprocess.run([sys.executable, str(REPO / "scripts" / "rig.py"),
                                   "--retries", "0", *job, *args.rig_option, "--", *command],
                                  cwd=REPO, capture_output=True, text=True)
            seconds = time.monotonic() - start
            if proc.returncode == 125:
                reason = re.search(r"rig: FAILED[^:]*\): (.*)", proc.stderr)
                text = reason.group(1) if reason else "?"
                kind = ("froze" if "froze" in text else "panic/oops"
                        if re.search(r"panic|Oops|BUG|guard|fault", text) else text[:60])
                outcome = f"rig failure: {kind}"
            elif proc.returncode == 0:
                outcome = "ok"
                times.append(seconds)
            else:
                outcome = f"command failed ({proc.returncode})"
            outcomes[outcome] += 1
            boots = [json.loads(line[5:]) for line in proc.stdout.splitlines()
                     if line.startswith("SOAK ")]
            for summary in boots:
                for vmm, result in summary.items():
                    soak[vmm].update(result["outcomes"])
            print(f"session {session + 1}/{args.sessions}: {outcome} in {seconds:.1f} s"
                  + "".join(f"; {vmm} {dict(result['outcomes'])}"
                            for summary in boots for vmm, result in summary.items()),
                  flush=True)
    finally:
        if spinner:
            spinner.kill()
    failures = sum(n for o, n in outcomes.items() if o.startswith("rig failure"))
    print(f"\nrig options {args.rig_option or 'default'}, busy={args.busy}, "
          + (f"boots per session {args.boots}: " if not args.command else
             f"command {' '.join(command)!r}: ")
          + f"{args.sessions} sessions, {failures} rig failures "
          f"({100 * failures / args.sessions:.0f}%), {outcomes['ok']} ok"
          + (f", median ok session {statistics.median(times):.1f} s" if times else ""))
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:3d}  {outcome}")
    for vmm, counts in soak.items():
        print(f"guest boots under {vmm}: {sum(counts.values())}: "
              + ", ".join(f"{n} {o}" for o, n in counts.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
