"""Command mode's stream ports against a hostile command on real Linux (issue 19).

A command that closes its stdin and writes to every ``/dev/vport*`` it can
open, and a writer that fills stdout as fast as the guest can: pyvmm exits
with the command's status, its RSS stays bounded, and ``--timeout`` and
SIGTERM are answered promptly.  (Linux's virtio_console lets one process
open a port at a time and builds one buffer per write: from user space a
command can't make overlapping chains or repeat DEVICE_READY; those attacks
are the tiny hostile guest's, tests/integration/test_hostile.py.)

Needs hardware KVM: run in the rig.  The ``kernel`` fixture is conftest.py's.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from pyvmm.kvm.system import is_pvm_host

from .test_command_mode import GUEST_TIMEOUT, REPO

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/kvm") or is_pvm_host(),
    reason="needs hardware KVM (kvm_pvm runs no Linux user space): run in the rig")

#: pyvmm's peak RSS bound (it runs in ~40 MiB; a 512 MiB guest's RAM is not counted).
RSS_BOUND = 256 << 20
#: How late --timeout and SIGTERM may be answered.
ANSWER_BOUND = 0.1
#: What the --timeout test's anchor adds to it: the deadline is known only through the
#: guest's uptime, and in the rig (TCG) the guest's clock and the host's drift apart by
#: up to a few hundred ms between two boots (measured: 0.07 s on an idle rig, 1.7 s with
#: the host's two cores busy).  SIGTERM's answer, timed from the host alone, has none.
TIMEOUT_ANCHOR_NOISE = 0.4
#: Bytes of stdout the full-speed writer must have pushed through before we stop it.
WRITTEN = 32 << 20


def start(kernel: str, *args: str, timeout: float = GUEST_TIMEOUT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", kernel,
                             "-t", str(timeout), "--", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def drain(proc: subprocess.Popen, until_bytes: int | None = None,
          limit: float = GUEST_TIMEOUT + 60) -> tuple[int, bytes]:
    """Read stdout (counting, not keeping) and stderr until EOF or ``until_bytes``."""
    assert proc.stdout is not None and proc.stderr is not None
    count, errors = 0, b""
    streams = [proc.stdout, proc.stderr]
    deadline = time.monotonic() + limit
    while streams and time.monotonic() < deadline:
        for stream in select.select(streams, [], [], 0.5)[0]:
            chunk = os.read(stream.fileno(), 1 << 20)
            if not chunk:
                streams.remove(stream)
            elif stream is proc.stdout:
                count += len(chunk)
            else:
                errors += chunk
        if until_bytes is not None and count >= until_bytes:
            break
    return count, errors


def reap(proc: subprocess.Popen) -> tuple[int, int, float]:
    """(status, peak RSS in bytes, when it ended) - keep reading so it never blocks on us."""
    assert proc.stdout is not None
    while True:
        pid, raw, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            ended = time.monotonic()
            proc.returncode = os.waitstatus_to_exitcode(raw)
            return proc.returncode, usage.ru_maxrss * 1024, ended
        if select.select([proc.stdout], [], [], 0.002)[0]:
            os.read(proc.stdout.fileno(), 1 << 20)


def test_writes_to_every_port_keep_the_commands_status(kernel: str) -> None:
    proc = start(kernel, "sh", "-c",
                 'exec 0<&-; for p in /dev/vport*; do '
                 '(printf "attack from the command\\n" > "$p") 2>/dev/null '
                 '&& echo "wrote $p" >&2 || echo "refused $p" >&2; done; exit 3')
    _, errors = drain(proc)
    status, rss, _ = reap(proc)
    assert status == 3, errors
    assert b"pyvmm:" not in errors, errors
    assert b"/dev/vport" in errors  # it did try them
    assert rss < RSS_BOUND


def first_line(proc: subprocess.Popen, limit: float = GUEST_TIMEOUT) -> tuple[bytes, float]:
    """The command's first stdout line and when it came."""
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + limit
    while b"\n" not in line and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line, time.monotonic()


#: The command under attack: says it started (with the guest's uptime), then either
#: writes stdout as fast as the guest can, or sleeps (the same exit path, no load).
WRITER = "read up _ </proc/uptime; echo started $up; exec cat /dev/zero"
QUIET = "read up _ </proc/uptime; echo started $up; exec sleep 100000"


def sigterm_answer(kernel: str, script: str) -> tuple[float, int, int]:
    """(seconds from SIGTERM to exit, status, peak RSS) once the command runs a while."""
    proc = start(kernel, "sh", "-c", script)
    line, _ = first_line(proc)
    assert line.startswith(b"started"), line
    written, errors = drain(proc, until_bytes=WRITTEN, limit=20)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status, rss, ended = reap(proc)
    return ended - signalled, status, rss


def test_a_full_speed_writer_answers_sigterm(kernel: str) -> None:
    """Measured against the same exit of a sleeping command (the rig's TCG makes
    pyvmm's own exit path slow: that is not the attack's).  Each is taken twice,
    alternately, and the quicker kept: one exit of the same command varies by
    ±100 ms from run to run in the rig (seen: 217-402 ms for the sleeper)."""
    runs = [sigterm_answer(kernel, script) for _ in range(2) for script in (QUIET, WRITER)]
    quiet = min(seconds for seconds, _, _ in runs[0::2])
    answered = min(seconds for seconds, _, _ in runs[1::2])
    rss = max(peak for _, _, peak in runs[1::2])
    print(f"SIGTERM answered in {answered * 1000:.0f} ms under the writer, "
          f"{quiet * 1000:.0f} ms for a sleeping command (the quicker of two each; all: "
          f"{', '.join(f'{seconds * 1000:.0f}' for seconds, _, _ in runs)} ms); "
          f"peak RSS {rss >> 20} MiB")
    assert [status for _, status, _ in runs] == [128 + signal.SIGTERM] * 4
    assert rss < RSS_BOUND
    assert answered - quiet < ANSWER_BOUND


def timeout_late(kernel: str, script: str, bound: float) -> tuple[float, int, int, bytes]:
    """(seconds past the --timeout, status, bytes written, stderr): the deadline is taken
    as the guest's boot (its uptime when the command started) plus ``bound``."""
    proc = start(kernel, "sh", "-c", script, timeout=bound)
    line, seen = first_line(proc)
    assert line.startswith(b"started"), line
    uptime = float(line.split()[1])
    written, errors = drain(proc)
    status, _, ended = reap(proc)
    return ended - (seen - uptime + bound), status, written, errors


def test_a_full_speed_writer_answers_the_timeout(kernel: str) -> None:
    bound = 45.0  # long enough for the guest to boot and write a while
    quiet, quiet_status, _, _ = timeout_late(kernel, QUIET, bound)
    late, status, written, errors = timeout_late(kernel, WRITER, bound)
    print(f"--timeout late by {late * 1000:.0f} ms under the writer ({written >> 20} MiB "
          f"written), {quiet * 1000:.0f} ms for a sleeping command")
    assert status == quiet_status == 255 and b"timed out after" in errors, errors
    assert written >= WRITTEN
    assert late - quiet < ANSWER_BOUND + TIMEOUT_ANCHOR_NOISE
