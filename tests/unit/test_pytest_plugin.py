"""pyvmm's pytest plugin where /dev/kvm is unusable: tests that need it skip, with the reason."""

from __future__ import annotations

import pytest

from pyvmm import pytest_plugin
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

        def test_plain():
            pass
    """)
    plugin = [] if plugin_autoloaded() else ["-p", "pyvmm.pytest_plugin"]
    result = pytester.runpytest_inprocess(*plugin, "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*/dev/kvm is not usable here*"])
