"""The hostile tiny guest attacks pyvmm: memory and time stay bounded, exits are as documented.

The measurements come from bench/hostile.py (which prints them for all attacks);
here each attack is run and its bounds asserted.
"""

from __future__ import annotations

import importlib.util
import os
import select
import subprocess
import sys
import time

import pytest

from pyvmm.exitstatus import ExitStatus

from .conftest import REPO, image, pyvmm_command

_spec = importlib.util.spec_from_file_location("bench_hostile", REPO / "bench" / "hostile.py")
assert _spec is not None and _spec.loader is not None
hostile = importlib.util.module_from_spec(_spec)
sys.modules["bench_hostile"] = hostile
_spec.loader.exec_module(hostile)

#: pyvmm with a 64 MiB guest runs in ~20 MiB here; before the fixes one request took 3 GiB.
RSS_BOUND = 256 << 20
#: How late pyvmm may answer --timeout or SIGTERM.  It answers in about 0.1 s
#: (bench/hostile.py) on a quiet host; at load 10 on 2 cores even the spinning
#: tiny/loop guest is 0.4-0.6 s late, so the bound leaves room for that, and is
#: still far from what the attacks cost before (72 s and 116 s late).
LATENCY_BOUND = 2.0


@pytest.fixture(autouse=True)
def built() -> None:
    image("tiny/hostile.bzImage")


def test_overlapping_discard_payloads_cost_no_memory() -> None:
    result = hostile.measure(hostile.Attack("discard-overlap", "block", False), 2.0)
    assert result["status"] == ExitStatus.OK, result["output"]
    for line in ("discard x254 status 1", "write-zeroes x254 status 1",
                 "discard x4096 needs-reset"):
        assert line in result["output"]
    assert result["peak_rss"] < RSS_BOUND


def test_eight_byte_mmio_reads_are_survived() -> None:
    result = hostile.measure(hostile.Attack("mmio-wide", "", False), 2.0)
    assert result["status"] == ExitStatus.OK, result["output"]
    assert "hostile: mmio-wide survived 0" in result["output"]


def test_output_on_the_stdin_port_is_dropped_not_fatal() -> None:
    """Command mode's machine: chains on the stdin port's transmit queue ended the
    event loop (AssertionError: exit 6, "event loop: ")."""
    result = hostile.measure(hostile.Attack("ports-stdin", "ports", False), 2.0)
    assert result["status"] == ExitStatus.OK, (result["output"], result["errors"])
    assert "hostile: ports-stdin used 256" in result["output"]
    assert "output on input port 'pyvmm.stdin' dropped" in result["errors"]
    assert result["peak_rss"] < RSS_BOUND


@pytest.mark.parametrize("attack", [a for a in hostile.ATTACKS if a.forever],
                         ids=lambda a: a.mode + ("-cache-none" if "direct" in a.device else ""))
def test_endless_attacks_leave_timeout_and_sigterm_prompt(attack) -> None:
    result = hostile.measure(attack, 2.0)
    assert result["status"] == ExitStatus.TIMEOUT, result["output"]
    assert result["sigterm_status"] == 128 + 15
    assert "hostile: attacking" in result["output"]
    assert result["timeout_late"] < LATENCY_BOUND, result
    assert result["sigterm_seconds"] < LATENCY_BOUND, result
    assert result["peak_rss"] < RSS_BOUND, result


def test_malformed_receive_chain_and_host_input_need_a_reset() -> None:
    proc = subprocess.Popen(
        pyvmm_command("run", "-k", str(image("tiny/hostile.bzImage")), "-m", "64M",
                      "-a", "console=hvc0 hostile=rx-outside", "--timeout", "60"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 30
    while b"rx posted" not in seen and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += os.read(proc.stdout.fileno(), 4096)
    proc.stdin.write(b"typed for hvc0\n")  # host input into the broken receive queue
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitStatus.OK, (seen + out, err)
    assert b"hostile: console needs reset" in seen + out
    assert b"needs a reset" in err


def test_ctrl_a_x_is_answered_during_an_attack(tmp_path, on_pty) -> None:
    """Ctrl-A x from the terminal while the guest floods the disk queue: exit 0, promptly."""
    from .terminal import read_until

    disk = tmp_path / "disk.img"
    with open(disk, "wb") as stream:
        stream.truncate(hostile.DISK_SIZE)
    terminal = on_pty(
        "run", "-k", str(image("tiny/hostile.bzImage")), "-m", "64M", "--drive", str(disk),
        "-a", "console=ttyS0 hostile=read-forever", "--timeout", "60")
    assert b"attacking" in read_until(terminal.master, b"attacking", 30)
    time.sleep(1.0)
    os.write(terminal.master, b"\x01x")
    start = time.monotonic()
    assert terminal.proc.wait(30) == ExitStatus.OK
    assert time.monotonic() - start < LATENCY_BOUND
    terminal.assert_restored()
