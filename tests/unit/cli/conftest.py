"""What the CLI tests share: the CLI run in-process (click's CliRunner), and the
check that bad input got pyvmm's one-line error."""

from __future__ import annotations

from click.testing import CliRunner, Result

from pyvmm.cli.main import main


def invoke(*args: str, env: dict | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def run_with_kernel(tmp_path, data: bytes, *extra: str, env: dict | None = None) -> Result:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(data)
    # A device that does not exist: input errors must be reported before KVM is opened.
    env = {"PYVMM_KVM_DEVICE": str(tmp_path / "no-kvm"), **(env or {})}
    return invoke("run", "--kernel", str(kernel), *extra, env=env)


def assert_one_line_error(result: Result, fragment: str, status: int = 2) -> None:
    assert result.exit_code == status, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("pyvmm: error:")
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
