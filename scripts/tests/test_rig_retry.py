"""retried_in_rig (tests/linux/guests.py): a guest triple fault is retried once in the rig only."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from tests.linux import guests
from tests.linux.guests import RigSuspectWarning, retried_in_rig

TRIPLE_FAULT = "pyvmm: the guest triple-faulted (KVM shutdown exit)"   # as pyvmm run says it
CLEAN = "pyvmm: the guest powered off"


def runs_returning(*stderrs: str) -> tuple[Callable[[], str], list[str]]:
    """A ``run`` that returns ``stderrs`` in turn (its result is its stderr), and the calls made."""
    calls: list[str] = []

    def run() -> str:
        calls.append(stderrs[len(calls)])
        return calls[-1]
    return run, calls


@pytest.fixture
def suspects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fresh: list[str] = []
    monkeypatch.setattr(guests, "RIG_SUSPECTS", fresh)
    return fresh


def test_in_the_rig_a_triple_fault_is_run_again_and_reported(
        monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    run, calls = runs_returning(TRIPLE_FAULT, CLEAN)
    with pytest.warns(RigSuspectWarning, match="the guest triple-faulted or hung; retried once"):
        assert retried_in_rig(run, lambda stderr: stderr) == CLEAN
    assert calls == [TRIPLE_FAULT, CLEAN]
    assert suspects == [TRIPLE_FAULT]


def test_in_the_rig_a_second_triple_fault_is_the_result(
        monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    run, calls = runs_returning(TRIPLE_FAULT, TRIPLE_FAULT)
    with pytest.warns(RigSuspectWarning):
        assert retried_in_rig(run, lambda stderr: stderr) == TRIPLE_FAULT
    assert len(calls) == 2 and len(suspects) == 1


@pytest.mark.parametrize("rig, stderr", [(None, TRIPLE_FAULT), ("0", TRIPLE_FAULT),
                                         ("1", CLEAN)],
                         ids=["triple-fault-on-hardware", "RIG=0", "clean-in-the-rig"])
def test_otherwise_it_runs_once_and_records_nothing(
        monkeypatch: pytest.MonkeyPatch, suspects: list[str], rig: str | None,
        stderr: str) -> None:
    if rig is None:
        monkeypatch.delenv("RIG", raising=False)
    else:
        monkeypatch.setenv("RIG", rig)
    run, calls = runs_returning(stderr, CLEAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert retried_in_rig(run, lambda stderr: stderr) == stderr
    assert calls == [stderr]
    assert suspects == []


def fake_qemu(tmp_path, body: str, name: str = "qemu-system-x86_64") -> list[str]:
    """A command named ``name`` (QEMU's) that runs ``body`` (sh) and counts its runs in ``runs``."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n{body}\n")
    script.chmod(0o755)
    return [str(script)]


def runs_of(tmp_path) -> int:
    return len((tmp_path / "runs").read_text().splitlines())


def test_a_qemu_guest_that_resets_before_its_init_ends_is_named_and_retried(
        tmp_path, monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    with pytest.warns(RigSuspectWarning):
        result = guests.boot(fake_qemu(tmp_path, "exit 0"))  # -no-reboot: a reset exits 0
    assert guests.QEMU_TRIPLE_FAULT in result.stderr
    assert runs_of(tmp_path) == 2 and len(suspects) == 1


def test_a_qemu_guest_that_hangs_is_named_and_retried(
        tmp_path, monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    with pytest.warns(RigSuspectWarning):
        result = guests.boot(fake_qemu(tmp_path, "exec sleep 30"), timeout=0.5)
    assert guests.QEMU_HUNG in result.stderr and result.status == guests.HUNG
    assert runs_of(tmp_path) == 2


def test_a_qemu_guest_that_ends_its_init_is_not_a_suspect(
        tmp_path, monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    result = guests.boot(fake_qemu(tmp_path, "echo 'pyvmm-init: exit 0'"))
    assert result.status == 0 and result.stderr == ""
    assert runs_of(tmp_path) == 1 and suspects == []


def test_a_pyvmm_hang_is_named_and_never_retried(
        tmp_path, monkeypatch: pytest.MonkeyPatch, suspects: list[str]) -> None:
    monkeypatch.setenv("RIG", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = guests.boot(fake_qemu(tmp_path, "exec sleep 30", name="pyvmm"), timeout=0.5)
    assert result.status == guests.HUNG and "pyvmm: the guest hung" in result.stderr
    assert guests.QEMU_HUNG not in result.stderr
    assert runs_of(tmp_path) == 1 and suspects == []
