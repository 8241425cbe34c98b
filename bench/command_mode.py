"""Command mode against virtme-ng, side by side in one run (run it where KVM is hardware).

    python3 bench/command_mode.py KERNEL [--vng PATH] [--rounds 5] [--files LIST]
    python3 bench/command_mode.py --make-tree TAR      # then, in the rig:
    python3 bench/command_mode.py KERNEL --tree TAR ...

For each workload, alternately: pyvmm run -k KERNEL -- CMD, vng -r KERNEL -- CMD,
and CMD on the host; prints the median wall time of each and the ratio.
Workloads: `true` (start-up to exit), `find /usr -type f | wc -l` (metadata), and
`cat` of the files listed in LIST (streaming; default: 200 MiB of /usr/lib).

With ``--tree TAR`` the files are a copy of the host's, unpacked first into a
fresh directory under ``--scratch`` (default /tmp): `find` walks its ``meta/``
(/usr/include, /usr/share/doc and /usr/lib/python3) and `cat` reads its
``stream/`` (200 MiB of /usr/lib's largest files).  That is for the rig, whose
root is 9p: there, the copy lives in the rig's RAM (its root's tmpfs upper
layer), so the guests' file systems are measured instead of 9p.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


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


#: What --make-tree copies into meta/ (about 15,000 files).
TREE_META = ("usr/include", "usr/share/doc", "usr/lib/python3")
#: Where --make-tree takes the largest files of for stream/.
TREE_STREAM = "usr/lib/x86_64-linux-gnu"


def make_tree(tar: str, stream_bytes: int = 200 << 20) -> None:
    """A tarball of meta/ (a copy of TREE_META) and stream/ (the largest files of TREE_STREAM)."""
    sizes = sorted(((p.stat().st_size, p) for p in Path("/", TREE_STREAM).iterdir()
                    if p.is_file() and not p.is_symlink()), reverse=True)
    stream, total = [], 0
    for size, path in sizes:
        if total + size <= stream_bytes:
            stream.append(str(path.relative_to("/")))
            total += size
    subprocess.run(["tar", "-cf", tar, "-C", "/",
                    "--transform", f"s,^{TREE_STREAM}/,stream/,",
                    "--transform", "s,^usr/,meta/,", *stream, *TREE_META], check=True)
    print(f"{tar}: stream/ {total >> 20} MiB", flush=True)


def unpack_tree(tar: str, scratch: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="pyvmm-bench-tree-", dir=scratch))
    start = time.monotonic()
    subprocess.run(["tar", "-xf", tar, "-C", str(root)], check=True)
    files = sum(len(names) for _, _, names in os.walk(root / "meta"))
    print(f"# unpacked {tar} into {root} in {time.monotonic() - start:.1f} s: "
          f"meta/ {files} files", flush=True)
    return root


def timed(argv: list[str], limit: float = 600) -> tuple[float, int, bytes, bytes]:
    """Seconds, status, the tails of stdout and stderr.

    A command in a virtualenv's bin (vng) runs with that bin first on PATH, as
    an activated virtualenv has it: vng runs its helpers from PATH.
    """
    bindir = os.path.dirname(os.path.abspath(argv[0]))
    env = None
    if os.path.exists(os.path.join(bindir, "activate")):
        env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        return time.monotonic() - start, -1, b"(timed out)", b""
    return time.monotonic() - start, proc.returncode, proc.stdout[-200:], proc.stderr[-300:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel", nargs="?")
    parser.add_argument("--make-tree", metavar="TAR", help="write the --tree tarball and exit")
    parser.add_argument("--tree", metavar="TAR", help="measure find and cat on a copy (above)")
    parser.add_argument("--scratch", default="/tmp", help="where --tree unpacks")
    parser.add_argument("--vng", default="vng")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files")
    parser.add_argument("--only", help="comma-separated workloads: true,find,cat")
    parser.add_argument("--runners", default="pyvmm,vng,host",
                        help="comma-separated: pyvmm,vng,host")
    args = parser.parse_args()
    if args.make_tree:
        make_tree(args.make_tree)
        return
    if not args.kernel:
        parser.error("KERNEL is required")
    if args.tree:
        root = unpack_tree(args.tree, args.scratch)
        workloads = {
            "true": "true",
            "find": f"find {root}/meta -type f | wc -l",
            "cat": f"cat {root}/stream/* | wc -c",
        }
    else:
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
    try:
        measure(workloads, runners, args.rounds)
    finally:
        if args.tree:
            shutil.rmtree(root)


def measure(workloads: dict[str, str], runners: dict[str, Callable[[str], list[str]]],
            rounds: int) -> None:
    for name, cmd in workloads.items():
        times: dict[str, list[float]] = {runner: [] for runner in runners}
        outputs: dict[str, set] = {runner: set() for runner in runners}
        for _ in range(rounds):
            for runner, make in runners.items():
                seconds, status, out, err = timed(make(cmd))
                print(f"# {name} {runner}: {seconds:.2f} s, status {status}"
                      + (f": {err.decode(errors='replace').strip()}" if status else ""),
                      flush=True)
                times[runner].append(seconds)
                outputs[runner].add((status, out.strip()[-40:]))
        medians = {runner: statistics.median(t) for runner, t in times.items()}
        print(f"{name}: " + ", ".join(f"{r} {m:.2f} s" for r, m in medians.items())
              + (f"; pyvmm/vng {medians['pyvmm'] / medians['vng']:.2f}"
                 if "vng" in medians and "pyvmm" in medians else "")
              + f"  (status, output tail: {outputs})", flush=True)


if __name__ == "__main__":
    main()
