"""Command mode against virtme-ng, side by side in one run (run it where KVM is hardware).

    python3 bench/command_mode.py KERNEL [--vng PATH] [--rounds 5] [--files LIST]

For each workload, alternately: pyvmm run -k KERNEL -- CMD, vng -r KERNEL -- CMD,
and CMD on the host; prints the median wall time of each and the ratio.
Workloads: `true` (start-up to exit), `find /usr -type f | wc -l` (metadata), and
`cat` of the files listed in LIST (streaming; default: 200 MiB of /usr/lib).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def default_files(limit: int = 200 << 20) -> list[str]:
    files, total = [], 0
    for root, dirs, names in os.walk("/usr/lib"):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append(path)
                total += os.path.getsize(path)
                if total >= limit:
                    return files
    return files


def timed(argv: list[str], limit: float = 600) -> tuple[float, int, bytes]:
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return time.monotonic() - start, -1, b"(timed out)"
    return time.monotonic() - start, proc.returncode, proc.stdout[-200:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel")
    parser.add_argument("--vng", default="vng")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files")
    parser.add_argument("--only", help="comma-separated workloads: true,find,cat")
    parser.add_argument("--runners", default="pyvmm,vng,host",
                        help="comma-separated: pyvmm,vng,host")
    args = parser.parse_args()
    files = open(args.files).read().split() if args.files else default_files()
    workloads = {
        "true": "true",
        "find": "find /usr -type f | wc -l",
        "cat": "cat " + " ".join(files) + " | wc -c",
    }
    if args.only:
        workloads = {k: v for k, v in workloads.items() if k in args.only.split(",")}
    runners = {
        "pyvmm": lambda cmd: [sys.executable, "-m", "pyvmm", "run", "-k", args.kernel,
                              "-m", "1G", "--", "sh", "-c", cmd],
        "vng": lambda cmd: [args.vng, "-r", args.kernel, "-m", "1G", "--", "sh", "-c", cmd],
        "host": lambda cmd: ["sh", "-c", cmd],
    }
    runners = {k: v for k, v in runners.items() if k in args.runners.split(",")}
    for name, cmd in workloads.items():
        times: dict[str, list[float]] = {runner: [] for runner in runners}
        outputs: dict[str, set] = {runner: set() for runner in runners}
        for _ in range(args.rounds):
            for runner, make in runners.items():
                seconds, status, out = timed(make(cmd))
                times[runner].append(seconds)
                outputs[runner].add((status, out.strip()[-40:]))
        medians = {runner: statistics.median(t) for runner, t in times.items()}
        print(f"{name}: " + ", ".join(f"{r} {m:.2f} s" for r, m in medians.items())
              + (f"; pyvmm/vng {medians['pyvmm'] / medians['vng']:.2f}"
                 if "vng" in medians else "")
              + f"  (status, output tail: {outputs})", flush=True)


if __name__ == "__main__":
    main()
