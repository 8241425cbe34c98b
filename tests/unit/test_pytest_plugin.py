"""pyvmm's pytest plugin without a VM: where /dev/kvm is unusable, tests that need it skip with
the reason; which machines ``pyvmm_snapshot`` takes for the same snapshot."""

from __future__ import annotations

import pytest

from pyvmm import pytest_plugin
from pyvmm.config.machine import config_from_options
from tests.conftest import plugin_autoloaded


def test_kvm_marker_and_fixture_skip_without_kvm(pytester: pytest.Pytester,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_plugin, "kvm_unusable", lambda: "/dev/kvm is not usable here: "
                                                             "No such file or directory")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvm
        def test_marked():
            raise AssertionError("ran without KVM")

        def test_fixture(pyvmm_machine):
            raise AssertionError("ran without KVM")

        def test_snapshot_fixture(pyvmm_snapshot):
            raise AssertionError("ran without KVM")

        def test_plain():
            pass
    """)
    plugin = [] if plugin_autoloaded() else ["-p", "pyvmm.pytest_plugin"]
    result = pytester.runpytest_inprocess(*plugin, "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(["*/dev/kvm is not usable here*"])


def primed(vm: object) -> None:
    """A ``prepare`` step (never run here: only its name counts)."""


def test_one_snapshot_per_machine_ready_pattern_and_prepare(tmp_path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"")

    def key(ready: str = "ready", prepare=None, **options) -> str:
        config = config_from_options(kernel=str(kernel), **{"memory": "64M", **options})
        return pytest_plugin.snapshot_key(config, ready, prepare)

    assert key().startswith("bzImage-") and key() == key()
    assert key(timeout=30) == key()  # a per-run option: the clones', not the machine's
    others = {key(memory="128M"), key(append="console=ttyS0 x=1"), key(cpus=2),
              key(ready="# $"), key(prepare=primed), key(prepare=lambda vm: None)}
    assert key() not in others and len(others) == 6
