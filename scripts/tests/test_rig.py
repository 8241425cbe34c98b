"""scripts/rig.py without booting it: what it says when it can't run, and how it reads its console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from script_module import SCRIPTS, load_script

RIG = SCRIPTS / "rig.py"


def test_no_qemu_is_exit_126_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # nothing to find on it
    proc = subprocess.run([sys.executable, str(RIG), "--no-compile", "--system-qemu", "--", "true"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 126
    assert proc.stderr.strip().splitlines() == [
        "rig: can't run here: no qemu-system-x86_64 (apt-get install qemu-system-x86)"]


def test_the_patched_qemu_is_used_when_built(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rig = load_script("rig")
    monkeypatch.setattr(rig, "CACHE", tmp_path)
    monkeypatch.setattr(rig.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert rig.rig_qemu() == ("/usr/bin/qemu-system-x86_64", "system")
    # Where build.sh installs it: the same key, computed by the script itself.
    key = subprocess.run(["bash", str(RIG.parent / "rig-qemu" / "build.sh"), "--print-key"],
                         capture_output=True, text=True, check=True).stdout.strip()
    binary = tmp_path / f"qemu-{key}" / "bin" / "qemu-system-x86_64"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert rig.rig_qemu() == (str(binary), "patched")
    assert rig.rig_qemu(system=True) == ("/usr/bin/qemu-system-x86_64", "system")
    job = tmp_path / "job"
    job.mkdir()
    rig.write_job(job, ["true"], "patched")
    assert "RIG_QEMU=patched" in (job / "env").read_text()


def test_no_kernel_with_kvm_amd_is_exit_126(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rig = load_script("rig")
    monkeypatch.setattr(rig.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(rig.os.path, "isdir", lambda path: False)  # no /lib/modules
    assert rig.main(["--no-compile", "--", "true"]) == 126
    assert "no kernel with kvm_amd" in capsys.readouterr().err


def test_the_newest_kernel_with_kvm_amd_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = load_script("rig")
    releases = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64"]
    monkeypatch.setattr(rig.os.path, "isdir", lambda path: True)
    monkeypatch.setattr(rig.os, "listdir", lambda path: releases)
    monkeypatch.setattr(rig.Path, "exists", lambda self: True)
    # 6.1.0-60 has no kvm_amd: the newest usable one is 6.1.0-56 (numeric, not text, order).
    monkeypatch.setattr(rig, "_modules",
                        lambda release, wanted: None if "-60-" in release else object())
    assert rig.rig_kernel() == "6.1.0-56-amd64"


@pytest.mark.parametrize("line,failure", [
    (b"[   89.028058] Kernel panic - not syncing: softlockup: hung tasks", True),
    (b"[    3.1] BUG: TASK stack guard page was hit at 0000 (stack is 0..1)", True),
    (b"[    7.2] Oops: 0000 [#1] PREEMPT SMP NOPTI", True),
    (b"[   75.3] kvm [200]: vcpu0, guest rIP: 0xffffffffb3673744 Unhandled WRMSR", False),
    (b"RIG-HEARTBEAT", False),
])
def test_the_rig_console_is_read_for_its_own_failures(line: bytes, failure: bool) -> None:
    rig = load_script("rig")
    session = rig.Session(rig.parse_args(["--", "true"]), "r", Path("/nonexistent"),
                          Path("/nonexistent"))
    session._line(line)
    assert (session.failure is not None) == failure and session.status is None


def test_the_status_line_ends_the_session_with_the_commands_status() -> None:
    rig = load_script("rig")
    session = rig.Session(rig.parse_args(["--", "true"]), "r", Path("/nonexistent"),
                          Path("/nonexistent"))
    session._line(b"RIG-RC=7\r")
    assert session.status == 7 and session.failure is None


#: A stand-in for the rig's QEMU: says RIG-START, then falls silent; its HMP monitor
#: answers ``info`` with a halted CPU, and the command named in $WAKE_ON (if any)
#: makes it speak again and end the command at once: a heartbeat and RIG-RC=$WAKE_RC (0).
FROZEN_QEMU = r"""#!{python}
import os, socket, sys
path = next(a for a in sys.argv if a.startswith("unix:"))[5:].split(",")[0]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
print("RIG-START", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"QEMU 7.2 monitor\n(qemu) ")
        command = conn.recv(1024).decode().strip()
        with open(os.environ["MONITOR_LOG"], "a") as log:
            log.write(command + "\n")
        if command.startswith("info"):
            conn.sendall(b"RIP=ffffffff81e3a5ab RFL=00000246 [---Z-P-] HLT=1\n(qemu) ")
            continue
        conn.sendall(b"(qemu) ")
        if command == os.environ.get("WAKE_ON"):
            print("RIG-HEARTBEAT\nRIG-RC=" + os.environ.get("WAKE_RC", "0"), flush=True)
            sys.exit(0)
"""


def _frozen_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FROZEN_QEMU first on PATH; its monitor's commands logged to tmp_path/monitor.log."""
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text(FROZEN_QEMU.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("MONITOR_LOG", str(tmp_path / "monitor.log"))


def commands_sent(wake_on: str | None) -> int:
    """How many of the nudges' words were sent before ``wake_on`` woke the rig."""
    return {"sendkey shift": 2, "cont": 5, None: 5}[wake_on]


@pytest.mark.parametrize("wake_on", ["cont", "sendkey shift", None])
def test_a_frozen_rig_is_described_and_nudged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             wake_on: str | None) -> None:
    _frozen_qemu(tmp_path, monkeypatch)
    if wake_on:
        monkeypatch.setenv("WAKE_ON", wake_on)
    rig = load_script("rig")
    session = rig.Session(rig.parse_args(["--watchdog", "1", "--", "true"]), "r",
                          tmp_path / "initramfs", tmp_path)
    session.NUDGE_WAIT = 0.5
    session.run()
    commands = (tmp_path / "monitor.log").read_text().split()
    nudges = ["sendkey", "shift", "nmi", "stop", "cont"]
    assert commands == ["info", "registers", "info", "lapic"] + nudges[:commands_sent(wake_on)]
    saved = (tmp_path / "rig-freeze.txt").read_text()
    assert "HLT=1" in saved and "QEMU threads:" in saved
    where = "RIP=ffffffff81e3a5ab RFL=00000246 HLT=1"
    if wake_on:
        # What the woken rig said went through the console's reading: its status counts.
        assert session.failure is None and session.status == 0
        lines = capsys.readouterr().err.splitlines()
        assert lines[0] == "rig: booting Debian's r in QEMU (TCG, 1 CPU) ..."
        assert lines[1].startswith("rig: up in ") and lines[1].endswith(", running the command")
        woke = {"cont": "stop/cont", "sendkey shift": "a key press"}[wake_on]
        assert lines[2:] == [f"rig: the rig froze ({where}); {woke} woke it"]
    else:
        assert session.status is None
        assert session.failure == (f"froze: nothing on its console for 1 s ({where}); "
                                   "none of a key press, an NMI, stop/cont woke it")


def test_a_command_that_fails_after_a_freeze_is_the_rigs_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frozen, the rig's clocks stood still: a failure after it is not the command's."""
    _frozen_qemu(tmp_path, monkeypatch)
    monkeypatch.setenv("WAKE_ON", "sendkey shift")
    monkeypatch.setenv("WAKE_RC", "1")
    rig = load_script("rig")
    session = rig.Session(rig.parse_args(["--watchdog", "1", "--", "true"]), "r",
                          tmp_path / "initramfs", tmp_path)
    session.run()
    assert session.status == 1 and session.woken_by == "a key press"
    assert session.failure == ("froze while the command ran (a key press woke it), and the "
                               "command then failed (status 1): not trusted")


def test_a_session_leaves_no_monitor_directory(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho RIG-START\necho RIG-RC=3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    rig = load_script("rig")
    session = rig.Session(rig.parse_args(["--", "true"]), "r", tmp_path / "initramfs", tmp_path)
    session.run()
    assert session.status == 3 and session.failure is None
    assert session.monitor.name == "monitor" and not session.monitor.parent.exists()
