"""Dumps of real guests: written on the right events, readable by inspect and gdb."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest

from pyvmm.exitstatus import ExitStatus
from pyvmm.kvm.system import is_pvm_host

from .conftest import REPO, image, pyvmm_command, run_pyvmm


def inspect(*args: str) -> Any:
    """``pyvmm inspect ARGS --json``, parsed (a dict or a list, by view)."""
    result = run_pyvmm("inspect", *args, "--json")
    assert result.status == 0, result.stderr
    return json.loads(result.stdout)


def test_triple_fault_dump_holds_the_pattern_and_the_page_tables(tmp_path) -> None:
    dump = tmp_path / "guest.core"
    result = run_pyvmm("run", "-k", str(image("tiny/dumpme.bzImage")), "--dump", str(dump))
    assert result.status == ExitStatus.GUEST_CRASHED
    cr3 = int(result.stdout.split("dumpme: cr3=")[1].split()[0], 16)
    summary = inspect("summary", str(dump))
    assert summary["run"]["kind"] == "triple-fault" and summary["vcpus"][0]["cr3"] == cr3
    four_k = inspect("mem", str(dump), "0xffff800000005000", "32", "--virt")
    assert four_k["physical"] == 0x2000000 and four_k["page_size"] == 4096
    assert bytes.fromhex(four_k["hex"]).startswith(b"PYVMM-DUMP-PATTERN:0000")
    two_m = inspect("mem", str(dump), "0xffff800000201234", "13", "--virt")
    assert two_m["physical"] == 0x2201234 and two_m["page_size"] == 2 << 20
    assert bytes.fromhex(two_m["hex"]) == b"PYVMM-2M-PAGE"
    assert 0x2201234 in inspect("search", str(dump), "PYVMM-2M-PAGE")["hits"]


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_accepts_a_guest_dump(tmp_path) -> None:
    dump = tmp_path / "guest.core"
    run_pyvmm("run", "-k", str(image("tiny/triplefault.bzImage")), "--dump", str(dump))
    rip = inspect("regs", str(dump))["rip"]
    out = subprocess.run(["gdb", "-batch", "-ex", "info registers rip", "-core", str(dump)],
                         capture_output=True, text=True).stdout
    assert hex(rip) in out


def test_no_dump_for_a_clean_exit_unless_asked(tmp_path) -> None:
    dump = tmp_path / "guest.core"
    run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")), "--dump", str(dump))
    assert not dump.exists()
    run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")), "--dump", str(dump),
              "--dump-on", "exit")
    assert inspect("summary", str(dump))["run"]["kind"] == "reboot"


def test_hung_guest_leaves_a_dump_on_timeout(tmp_path) -> None:
    dump = tmp_path / "guest.core"
    result = run_pyvmm("run", "-k", str(image("tiny/loop.bzImage")), "--timeout", "1",
                       "--dump", str(dump))
    assert result.status == ExitStatus.TIMEOUT
    assert inspect("summary", str(dump))["run"]["kind"] == "timeout"


def test_live_dumps_while_the_guest_runs(tmp_path) -> None:
    socket_path, dump = tmp_path / "vmm.sock", tmp_path / "live.core"
    proc = subprocess.Popen(
        pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")), "--timeout", "60",
                      "--control", str(socket_path), "--dump", str(dump),
                      "--dump-on", "signal"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Through the control socket: inspect reads the running guest.
        live = inspect("summary", str(socket_path))
        assert live["run"]["kind"] == "live" and live["vcpus"][0]["rip"] >= 0x100000
        # Through SIGUSR1: a dump at --dump, and the guest goes on running.
        proc.send_signal(signal.SIGUSR1)
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert inspect("summary", str(dump))["run"]["kind"] == "live"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not socket_path.exists()


def test_failed_live_dumps_leave_the_guest_running_and_nothing_behind(tmp_path) -> None:
    """A live dump nobody can write (SIGUSR1, the control socket) is an error, not a stop."""
    socket_path, target = tmp_path / "vmm.sock", tmp_path / "adir"
    target.mkdir()
    proc = subprocess.Popen(
        pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")), "--timeout", "60",
                      "--control", str(socket_path), "--dump", str(tmp_path / "no/such.core"),
                      "--dump-on", "signal"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None
        from pyvmm.vmm.control import request_dump
        from pyvmm.dump import DumpError

        with pytest.raises(DumpError, match="is a directory"):
            request_dump(str(socket_path), str(target))
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "live dump failed" in stderr.decode() and "No such file" in stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
    assert list(target.iterdir()) == []


def test_kernel_log_from_a_linux_dump(tmp_path) -> None:
    dump = tmp_path / "linux.core"
    # On kvm_pvm this is an experiment (how far start-up gets): --emulation-assist says so.
    result = run_pyvmm("run", "-k", str(image("linux/vmlinux")), "-a", "console=ttyS0 noxsave",
                       "--emulation-assist", "on", "--timeout", "240", "--dump", str(dump),
                       "--dump-on", "exit", timeout=300)
    if not is_pvm_host():
        assert result.status == ExitStatus.OK
    log = inspect("dmesg", str(dump), "--system-map", str(image("linux/System.map")))
    texts = [record["text"] for record in log]
    assert texts[0].startswith("Linux version 6.1")
    assert any("Command line: console=ttyS0 noxsave" in t for t in texts)
    assert log == sorted(log, key=lambda r: r["seq"])
