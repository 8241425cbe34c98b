#!/usr/bin/env python3
"""How long qemu-storage-daemon takes to start as pyvmm starts it, and where the time goes.

Each round spawns the daemon twice, its QMP monitor given two ways: ``listen``
(a socket it listens on, which we connect to as soon as its file appears: how
pyvmm did it) and ``fd`` (a socketpair connected before it starts, QEMU's
``fd=``: how pyvmm does it now), and times the socket appearing, the
connect, QEMU's greeting and the answer to ``qmp_capabilities``.  Meanwhile every 0.25 s
it samples the daemon's threads (state, wait channel, system call) and its
major page faults, so a slow start says whether it is reading pages (the
binary and its libraries over the rig's 9p root), waiting on a lock or in a
system call.  Run it first thing in a fresh rig session (cold caches):

    python3 scripts/rig.py -- python3 bench/qsd_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DAEMON = shutil.which("qemu-storage-daemon") or "qemu-storage-daemon"


def sample(pid: int) -> str:
    """The process's threads in brief: name, state, wchan, syscall; its major faults."""
    parts = []
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        majflt = stat[stat.rindex(")") + 2:].split()[9]
        parts.append(f"majflt={majflt}")
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            try:
                tstat = (task / "stat").read_text()
                state = tstat[tstat.rindex(")") + 2:].split()[0]
                name = (task / "comm").read_text().strip()
                wchan = (task / "wchan").read_text().strip()
                syscall = (task / "syscall").read_text().split()[0]
            except OSError:
                continue
            parts.append(f"{name}:{state}:{wchan or '-'}:sys{syscall}")
    except (OSError, IndexError):
        return "gone"
    return " ".join(parts)


def one_round(mode: str, timeout: float) -> dict:
    directory = tempfile.mkdtemp(prefix="qsd-start-")
    path = os.path.join(directory, "qmp.sock")
    marks: dict = {}
    samples: list[str] = []
    started = time.monotonic()
    pass_fds: tuple[int, ...] = ()
    if mode == "fd":
        sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        chardev, pass_fds = f"socket,id=qmp,fd={theirs.fileno()}", (theirs.fileno(),)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        chardev = f"socket,id=qmp,path={path},server=on,wait=off"
    proc = subprocess.Popen([DAEMON, "--chardev", chardev, "--monitor", "chardev=qmp"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            pass_fds=pass_fds)
    if mode == "fd":
        theirs.close()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            samples.append(f"{time.monotonic() - started:6.2f} {sample(proc.pid)}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        while mode == "listen" and not os.path.exists(path):
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError("no socket")
            time.sleep(0.005)
        marks["socket"] = time.monotonic() - started
        while mode == "listen":
            try:
                sock.connect(path)
                break
            except OSError as exc:
                marks.setdefault("refused", str(exc))
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.005)
        marks["connected"] = time.monotonic() - started
        sock.settimeout(timeout)
        buffer = b""
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("closed")
            buffer += chunk
        marks["greeting"] = time.monotonic() - started
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        buffer = buffer.partition(b"\n")[2]
        while b"\n" not in buffer:
            buffer += sock.recv(65536)
        marks["capabilities"] = time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 - a probe: report whatever happened
        marks["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        done.set()
        watcher.join()
        sock.close()
        proc.terminate()
        try:
            output = proc.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        shutil.rmtree(directory, ignore_errors=True)
    marks["output"] = output.decode(errors="replace").strip()[-500:]
    marks["samples"] = samples
    return marks


def report(index: int, marks: dict) -> None:
    """One line per start; the samples too if it was slow or failed."""
    times = " ".join(f"{key} {marks[key]:.3f}s" for key in
                     ("socket", "connected", "greeting", "capabilities") if key in marks)
    print(f"round {index + 1} {marks['mode']:6}: {times}"
          + (f" ERROR {marks['error']}" if "error" in marks else ""), flush=True)
    if "error" in marks or marks.get("capabilities", 0) > 1.0:
        print("  samples:\n    " + "\n    ".join(marks["samples"][:60]), flush=True)
        if marks["output"]:
            print(f"  daemon said: {marks['output']}")


def crng_ready() -> str:
    """Whether getrandom(2) would block now (the kernel's random pool not yet seeded)."""
    try:
        os.getrandom(1, os.GRND_NONBLOCK)
        return "ready"
    except BlockingIOError:
        return "NOT ready (getrandom would block)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=90)
    parser.add_argument("--modes", default="listen,fd", help="listen, fd or both (default)")
    parser.add_argument("--json", help="also write the rounds here")
    args = parser.parse_args()
    uptime = Path("/proc/uptime").read_text().split()[0]
    print(f"qsd_start: {DAEMON}, system up {uptime} s, crng {crng_ready()}", flush=True)
    rounds = []
    for index in range(args.rounds):
        for mode in args.modes.split(","):
            marks = one_round(mode, args.timeout)
            marks["mode"] = mode
            rounds.append(marks)
            report(index, marks)
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
