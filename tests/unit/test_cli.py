"""The CLI in-process with click's CliRunner: help, version, bad input."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from pyvmm import __version__
from pyvmm.cli import main


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args) -> None:
    result = invoke(*args)
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_run_help_documents_exit_statuses() -> None:
    text = invoke("run", "--help").output
    for fragment in ("124", "debug-exit", "Ctrl-A x"):
        assert fragment in text


def test_kernel_is_required() -> None:
    result = invoke("run")
    assert result.exit_code == 2
    assert "--kernel" in result.output


def test_bad_memory_size() -> None:
    result = invoke("run", "--kernel", "k", "--memory", "12X")
    assert result.exit_code == 2
    assert "'12X' is not a size" in result.output


def test_zero_cpus(tmp_path) -> None:
    result = invoke("run", "--kernel", str(tmp_path / "k"), "--cpus", "0")
    assert result.exit_code == 2
    assert "at least one vCPU" in result.output
    assert "Traceback" not in result.output


def test_missing_kernel(tmp_path) -> None:
    result = invoke("run", "--kernel", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert re.search(r"error: kernel '.*nope' not found", result.output)
    assert len(result.output.strip().splitlines()) == 1


def test_missing_initrd(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    result = invoke("run", "--kernel", str(kernel), "--initrd", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "initrd" in result.output and "not found" in result.output


def test_empty_kernel(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"")
    result = invoke("run", "--kernel", str(kernel))
    assert result.exit_code == 2
    assert "empty" in result.output
