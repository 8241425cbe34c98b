"""``pyvmm check`` on this host, as a user runs it (tests/linux/test_check.py: in the rig)."""

from __future__ import annotations

import json

import pytest

from pyvmm.kvm.system import is_pvm_host

from .conftest import run_pyvmm


@pytest.mark.skipif(not is_pvm_host(), reason="kvm_pvm only: on hardware KVM, "
                    "tests/linux/test_check.py checks the ok case")
def test_a_kvm_pvm_host_is_reported_and_exits_non_zero() -> None:
    result = run_pyvmm("check")
    assert result.status == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok      /dev/kvm: ")
    assert lines[1].startswith("missing hardware virtualization: /dev/kvm here is kvm_pvm")
    assert "scripts/rig.py" in lines[1]
    assert lines[-1].startswith("pyvmm check: Linux guests can't reach user space here")
    report = json.loads(run_pyvmm("check", "--json").stdout)
    assert report["linux_guests"] is False
    assert [c["name"] for c in report["capabilities"] if c["required"] and not c["ok"]] == \
        ["hardware virtualization"]
