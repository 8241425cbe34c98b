"""Run the hostile tiny guest's attacks and measure what they cost pyvmm.

For each attack: pyvmm's peak RSS (``wait4``), and for the attacks that never
end, how late pyvmm exits after ``--timeout`` (counted from the guest's first
output) and after SIGTERM.  The port attacks run on command mode's machine
(bench/command_machine.py: the stream ports, as ``pyvmm run -- CMD`` builds
them, on any KVM).  The integration tests
(tests/integration/test_hostile.py) assert bounds on the same numbers.

    python3 bench/hostile.py [--repo DIR] [--timeout 3] [--attack NAME]...
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Guest RAM for every attack: RSS bounds are stated against it.
GUEST_MEMORY = "64M"
#: The disk the block attacks use (sparse): large enough for 254 MiB reads.
DISK_SIZE = 256 << 20
#: Output kept from each run (the rest is read and dropped, as fast as it comes).
KEPT_OUTPUT = 1 << 20


@dataclass(frozen=True)
class Attack:
    mode: str
    device: str          # "block", "block-direct", "console", "ports" or ""
    forever: bool        # True: the guest never stops; we stop it


ATTACKS = (
    Attack("discard-overlap", "block", False),
    Attack("mmio-wide", "", False),
    Attack("zeroes-forever", "block", True),
    Attack("indirect-forever", "block", True),
    Attack("read-forever", "block", True),
    Attack("read-forever", "block-direct", True),
    Attack("tx-forever", "console", True),
    Attack("ports-stdin", "ports", False),
    Attack("ports-tx-forever", "ports", True),
    Attack("ports-status-forever", "ports", True),
    Attack("ports-control-forever", "ports", True),
)


@dataclass
class Outcome:
    status: int
    #: From the guest's first output (timeout runs: the guest starts within
    #: milliseconds of the --timeout clock, so this is that clock) or from SIGTERM.
    seconds: float
    peak_rss: int         # bytes: the process's own high-water mark (see peak_rss_of)
    output: str           # the guest's console (stdout)
    errors: str           # pyvmm's own messages (stderr)


def pyvmm_args(attack: Attack | None, disk: str, extra: tuple[str, ...] = ()) -> list[str]:
    images = REPO / "images" / "out" / "tiny"
    if attack is None:
        return ["run", "-k", str(images / "loop.bzImage"), "-m", GUEST_MEMORY, *extra]
    args = ["run", "-k", str(images / "hostile.bzImage"), "-m", GUEST_MEMORY,
            "-a", f"console=ttyS0 hostile={attack.mode}"]
    if attack.device == "ports":  # command mode's machine: its script, the same options
        args[0] = str(REPO / "bench" / "command_machine.py")
    if attack.device.startswith("block"):
        spec = f"path={disk}" + (",cache=none" if attack.device == "block-direct" else "")
        args += ["--drive", spec]
    return args + list(extra)


def peak_rss_of(pid: int, seen: int) -> int:
    """The larger of ``seen`` and the process's RSS high-water mark (VmHWM), in bytes.

    Not wait4's ru_maxrss: a child spawned by a large process (a pytest run that
    restored guests in-process) starts its count from that process's high-water
    mark (vfork lends it the parent's memory map up to exec), so every child then
    "peaked" at the test runner's size.  VmHWM is the exec'd program's own map's;
    sampled while it runs (every 50 ms here), it misses only what a process
    touches in its last moments before exiting."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return max(seen, int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass  # gone, or exiting (no memory map left to read)
    return seen


def run(args: list[str], repo: Path = REPO, sigterm_after: str | None = None,
        wait: float = 1.0, limit: float = 120.0) -> Outcome:
    """Run pyvmm; with ``sigterm_after``, SIGTERM it ``wait`` s after that output."""
    start = time.monotonic()
    command = [sys.executable, *args] if args[0].endswith(".py") else \
        [sys.executable, "-m", "pyvmm", *args]
    env = {**os.environ, "PYTHONPATH": str(repo)}  # that checkout's pyvmm, not ours
    proc = subprocess.Popen(command, cwd=repo, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    output = errors = b""
    signalled = signal_at = first_output = None
    deadline = start + limit
    peak_rss = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 0.05)
        peak_rss = peak_rss_of(proc.pid, peak_rss)
        if proc.stderr in ready:
            errors += os.read(proc.stderr.fileno(), 1 << 16)
        if proc.stdout in ready:
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            if first_output is None:
                first_output = time.monotonic()
            if len(output) < KEPT_OUTPUT:  # a flooding guest: keep the start, drain the rest
                output += chunk[:KEPT_OUTPUT - len(output)]
        if sigterm_after and signal_at is None and sigterm_after.encode() in output:
            signal_at = time.monotonic() + wait  # keep reading meanwhile: never a slow reader
        if signal_at is not None and signalled is None and time.monotonic() >= signal_at:
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
    else:
        proc.kill()
    _, raw_status = os.waitpid(proc.pid, 0)
    end = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(raw_status)
    errors += proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return Outcome(proc.returncode, end - (signalled or first_output or start),
                   peak_rss, output.decode(errors="replace"),
                   errors.decode(errors="replace"))


def measure(attack: Attack | None, timeout: float, repo: Path = REPO) -> dict:
    """Peak RSS and --timeout / SIGTERM latencies of one attack (and the baseline)."""
    with tempfile.TemporaryDirectory() as directory:
        disk = os.path.join(directory, "disk.img")
        with open(disk, "wb") as stream:
            stream.truncate(DISK_SIZE)
        if attack is None:
            name, marker = "baseline (tiny/loop)", "looping"
        else:
            name = attack.mode + (" (cache=none)" if "direct" in attack.device else "")
            marker = "hostile: attacking"
        result: dict = {"attack": name}
        if attack is not None and not attack.forever:
            outcome = run(pyvmm_args(attack, disk, ("--timeout", "60")), repo)
            result.update(status=outcome.status, peak_rss=outcome.peak_rss,
                          output=outcome.output, errors=outcome.errors)
            return result
        timed = run(pyvmm_args(attack, disk, ("--timeout", str(timeout))), repo)
        termed = run(pyvmm_args(attack, disk, ("--timeout", "60")), repo,
                     sigterm_after=marker)
        result.update(status=timed.status, sigterm_status=termed.status,
                      peak_rss=max(timed.peak_rss, termed.peak_rss),
                      timeout_late=timed.seconds - timeout,
                      sigterm_seconds=termed.seconds, output=timed.output)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the pyvmm checkout to measure (e.g. an older one)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--attack", action="append", help="only these modes")
    args = parser.parse_args()
    print(f"{'attack':28} {'status':>6} {'peak RSS':>10} {'--timeout late':>15} "
          f"{'SIGTERM':>9}")
    for attack in (None, *ATTACKS):
        if args.attack and (attack.mode if attack else "baseline") not in args.attack:
            continue
        r = measure(attack, args.timeout, args.repo)
        late = f"{r['timeout_late']:+.2f} s" if "timeout_late" in r else "-"
        term = f"{r['sigterm_seconds']:.2f} s" if "sigterm_seconds" in r else "-"
        print(f"{r['attack']:28} {r['status']:>6} {r['peak_rss'] / (1 << 20):>8.0f} M "
              f"{late:>15} {term:>9}", flush=True)


if __name__ == "__main__":
    main()
