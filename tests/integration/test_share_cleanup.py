"""Nothing ``--share`` starts outlives pyvmm: no virtiofsd, no /tmp/pyvmm-fs-* directory.

The CLI's exit path (``close_at_exit``) never released the shares: every run
left its socket directory and virtiofsd log behind, whatever ended it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from pyvmm.exitstatus import ExitStatus
from pyvmm.vhost.virtiofsd import QEMU_VIRTIOFSD

from .conftest import REPO, image, pyvmm_command


@pytest.fixture(autouse=True)
def virtiofsd() -> None:
    if not shutil.which("virtiofsd") and not any(os.access(p, os.X_OK) for p in QEMU_VIRTIOFSD):
        pytest.skip("no virtiofsd on this host")


@pytest.mark.parametrize("stop", ["poweroff", "timeout", "sigterm"])
def test_share_leaves_nothing_behind(tmp_path, stop: str) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    guest = "bootcheck" if stop == "poweroff" else "loop"
    command = pyvmm_command("run", "-k", str(image(f"tiny/{guest}.bzImage")), "-m", "64M",
                            "--share", str(shared))
    if stop == "timeout":
        command += ["--timeout", "1"]
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(private_tmp)})
    if stop == "sigterm":
        deadline = time.monotonic() + 30
        while not list(private_tmp.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the share is up
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    expected = {"poweroff": 0, "timeout": ExitStatus.TIMEOUT, "sigterm": 128 + signal.SIGTERM}
    assert proc.returncode == expected[stop], stderr
    assert list(private_tmp.iterdir()) == []
