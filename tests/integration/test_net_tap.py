"""--net tap on a whole machine (a tiny guest): the tap pyvmm made is there while the
guest runs and gone however pyvmm ends; the NIC is served by pyvmm (vhost=off; this
host's KVM may have no vhost-net)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from pyvmm.exitstatus import ExitStatus

from .conftest import REPO, image, pyvmm_command

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/net/tun") or os.geteuid() != 0,
                                reason="making a tap needs /dev/net/tun and root")


@pytest.mark.parametrize("stop", ["poweroff", "timeout", "sigterm"])
def test_a_tap_pyvmm_made_goes_with_it(stop: str) -> None:
    name = f"pyvmmi{os.getpid() % 100000}"
    guest = "bootcheck" if stop == "poweroff" else "loop"
    command = pyvmm_command("run", "-k", str(image(f"tiny/{guest}.bzImage")), "-m", "64M",
                            "--net", f"tap={name},vhost=off",
                            *(["--timeout", "3"] if stop == "timeout" else []))
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stop != "poweroff":
        deadline = time.monotonic() + 30
        while not os.path.exists(f"/sys/class/net/{name}"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
    if stop == "sigterm":
        assert proc.stdout is not None and b"looping" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    expected = {"poweroff": 0, "timeout": ExitStatus.TIMEOUT, "sigterm": 128 + signal.SIGTERM}
    assert proc.returncode == expected[stop], stderr
    assert not os.path.exists(f"/sys/class/net/{name}")


def test_a_deleted_tap_stops_the_guest_with_one_line() -> None:
    name = f"pyvmmd{os.getpid() % 100000}"
    command = pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")), "-m", "64M",
                            "--timeout", "60", "--net", f"tap={name},vhost=off")
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and b"looping" in proc.stdout.readline()
    subprocess.run(["ip", "link", "del", name], check=True)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == ExitStatus.VMM_ERROR, stderr
    assert [line for line in stderr.decode().splitlines() if "tap" in line] == [
        f"pyvmm: the tap {name} went away (deleted?)"], stderr
