"""--net user on a whole machine: pyvmm starts a passt per NIC (its forwarded port
listens), and nothing outlives pyvmm however it ends; a passt that dies stops the
guest with one line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pyvmm.exitstatus import ExitStatus

from .conftest import REPO, image, pyvmm_command

pytestmark = pytest.mark.skipif(shutil.which("passt") is None, reason="passt not installed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[str]:
    """Names of ``pid``'s child processes."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    with open(f"/proc/{entry}/comm") as comm:
                        found.append(comm.read().strip())
        except (OSError, ValueError, IndexError):
            continue
    return found


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _start(tmp_path: Path, guest: str, *extra: str) -> tuple[subprocess.Popen, int, Path]:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    port = _free_port()
    command = pyvmm_command("run", "-k", str(image(f"tiny/{guest}.bzImage")), "-m", "64M",
                            "--net", f"user,hostfwd=tcp:127.0.0.1:{port}-:80", "--net", "user",
                            *extra)
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(private_tmp)})
    return proc, port, private_tmp


def _wait_for_passt(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(name.startswith("passt") for name in _children(proc.pid)) == 2 and \
                _listening(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"no two passts under pyvmm: {_children(proc.pid)}")


@pytest.mark.parametrize("stop", ["poweroff", "timeout", "sigterm"])
def test_passt_starts_and_goes_with_pyvmm(tmp_path, stop: str) -> None:
    guest = "bootcheck" if stop == "poweroff" else "loop"
    proc, port, private_tmp = _start(tmp_path, guest,
                                     *(["--timeout", "3"] if stop == "timeout" else []))
    if stop != "poweroff":
        _wait_for_passt(proc, port)
    if stop == "sigterm":
        # Once the guest runs: pyvmm's handlers are installed after the machine is built.
        assert proc.stdout is not None and b"looping" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    expected = {"poweroff": 0, "timeout": ExitStatus.TIMEOUT, "sigterm": 128 + signal.SIGTERM}
    assert proc.returncode == expected[stop], stderr
    assert list(private_tmp.iterdir()) == []
    assert not _listening(port)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_passt_of(p, port)]


def _is_passt_of(pid: str, port: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return f"127.0.0.1/{port}:80".encode() in cmdline.read()
    except OSError:
        return False


def test_a_dying_passt_stops_the_guest_with_one_line(tmp_path) -> None:
    proc, port, private_tmp = _start(tmp_path, "loop", "--timeout", "60")
    _wait_for_passt(proc, port)
    victim = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _is_passt_of(p, port))
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == ExitStatus.VMM_ERROR, stderr
    lines = [line for line in stderr.decode().splitlines() if "passt" in line]
    assert lines == ["pyvmm: passt for --net 0 was killed by signal 9"], stderr
    assert list(private_tmp.iterdir()) == []


def test_a_signal_while_the_machine_is_built_leaves_nothing_behind(tmp_path) -> None:
    """SIGTERM while the second NIC's passt starts (the first one is running, its private
    directory made): pyvmm unwinds, stops the first passt, removes its directory and
    exits 128+15 with one line."""
    real = shutil.which("passt")
    wrapper = tmp_path / "passt"
    # The second passt (no hostfwd) signals pyvmm, then runs as the real one would.
    wrapper.write_text("#!/bin/sh\ncase \"$*\" in *127.0.0.1/*) ;; *) kill -TERM $PPID;; "
                       f"esac\nexec {real} \"$@\"\n")
    wrapper.chmod(0o700)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    port = _free_port()
    command = pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")), "-m", "64M",
                            "--net", f"user,hostfwd=tcp:127.0.0.1:{port}-:80", "--net", "user")
    result = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                            timeout=60, env={**os.environ, "TMPDIR": str(private_tmp),
                                             "PYVMM_PASST": str(wrapper)})
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.decode().strip().splitlines()[-1] == "pyvmm: stopped by SIGTERM"
    assert b"Traceback" not in result.stderr
    assert list(private_tmp.iterdir()) == []
    assert not _listening(port)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_passt_of(p, port)]
