#!/usr/bin/env python3
"""Dump write speed: 1 GiB of guest RAM, sparse (untouched) and dense (random), with peak RSS.

Each case runs in a fresh process so its peak RSS (VmHWM) is its own.  The
guest RAM is an anonymous mmap as the VMM allocates it; the dense case fills
it first, so the baseline RSS includes the 1 GiB of RAM itself, and what the
dump adds is the difference.

Usage: python3 bench/dump_speed.py [--size-mib 1024] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
from pyvmm.dump.core import write_core
from pyvmm.dump.state import VcpuRegisters
from pyvmm.memory import GuestMemory

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
size, dense, path = int(sys.argv[1]), sys.argv[2] == "dense", sys.argv[3]
memory = GuestMemory.anonymous([(0, size)])
if dense:
    block = os.urandom(1 << 20)
    view = memoryview(memory.regions[0].buffer)
    for offset in range(0, size, 1 << 20):
        view[offset:offset + (1 << 20)] = block
    view.release()
before = hwm()
start = time.perf_counter()
write_core(path, memory, [VcpuRegisters(0, {"rip": 0x100000})])
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "rss_before": before, "rss_peak": hwm(),
                  "file_blocks": os.stat(path).st_blocks * 512}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size = args.size_mib << 20
    print(f"{'case':8} {'MB/s':>8} {'seconds':>8} {'on disk':>10} {'RSS before':>11} "
          f"{'RSS peak':>10} {'added':>8}")
    for case in ("sparse", "dense"):
        path = os.path.join(args.dir, f"pyvmm-bench-{case}.core")
        out = subprocess.run([sys.executable, "-c", CHILD, str(size), case, path],
                             capture_output=True, text=True, check=True).stdout
        os.unlink(path)
        r = json.loads(out)
        mib = lambda b: f"{b / (1 << 20):.0f} MiB"  # noqa: E731
        print(f"{case:8} {size / r['seconds'] / 1e6:8.0f} {r['seconds']:8.2f} "
              f"{mib(r['file_blocks']):>10} {mib(r['rss_before']):>11} {mib(r['rss_peak']):>10} "
              f"{mib(r['rss_peak'] - r['rss_before']):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
