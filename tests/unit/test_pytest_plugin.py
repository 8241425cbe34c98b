"""pyvmm's pytest plugin without a VM: where /dev/kvm is unusable, tests that need it skip with
the reason; which machines ``pyvmm_snapshot`` takes for the same snapshot; which clones it
keeps restored ahead, and that it stops them."""

from __future__ import annotations

import threading

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


class _Restored:
    """What ``Machine.restore`` gives here: a machine that notes its stop."""

    def __init__(self, path: object, stops: list[str], **per_run: object) -> None:
        self.name, self.stops = f"{path} {sorted(per_run.items())}", stops

    def stop(self) -> None:
        self.stops.append(self.name)


def test_clones_restored_ahead_are_per_snapshot_and_options_and_released(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pyvmm.api import Machine

    stops: list[str] = []
    restores: list[str] = []

    def restore(path: object, **per_run: object) -> _Restored:
        if str(path).endswith("damaged"):
            raise pytest_plugin.SnapshotBootError("damaged")
        restores.append(str(path))
        return _Restored(path, stops, **per_run)

    monkeypatch.setattr(Machine, "restore", staticmethod(restore))
    prepared = pytest_plugin.PreparedClones(keep=2)
    a, b, c = (tmp_path / name for name in "abc")
    assert prepared.take(a, {}) is None                 # nothing restored ahead yet
    prepared.prepare(a, {})
    prepared.prepare(a, {})                             # one per snapshot and options
    prepared.prepare(a, {"timeout": 5})
    taken = prepared.take(a, {})
    assert isinstance(taken, _Restored) and taken.name == f"{a} []"
    assert prepared.take(a, {}) is None and prepared.taken == 1
    prepared.prepare(tmp_path / "damaged", {})          # failed ahead: the call restores
    assert prepared.take(tmp_path / "damaged", {}) is None and prepared.taken == 1
    prepared.prepare(b, {})
    prepared.prepare(c, {})                             # a's timeout=5 is the oldest: stopped
    assert stops == [f"{a} [('timeout', 5)]"] and len(restores) == 4
    prepared.close()                                    # the unused ones are stopped
    assert sorted(stops[1:]) == [f"{b} []", f"{c} []"]
    assert not [t for t in threading.enumerate() if t.name == "pyvmm-restore-ahead"]
