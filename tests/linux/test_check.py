"""``pyvmm check`` where KVM is hardware (the rig's SVM): every required line ok, exit 0."""

from __future__ import annotations

import json
import subprocess
import sys


def test_hardware_kvm_is_reported_and_exits_0() -> None:
    result = subprocess.run([sys.executable, "-c", "from pyvmm.cli.main import entry; entry()",
                             "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok      /dev/kvm: ")
    assert lines[1] in ("ok      hardware virtualization: SVM (kvm_amd)",
                        "ok      hardware virtualization: VMX (kvm_intel)")
    assert lines[2].startswith("ok      KVM capabilities: all ")
    assert lines[-1] == "pyvmm check: Linux guests run here"
    report = json.loads(subprocess.run(
        [sys.executable, "-c", "from pyvmm.cli.main import entry; entry()", "check", "--json"],
        capture_output=True, text=True, timeout=120).stdout)
    assert report["linux_guests"] is True
