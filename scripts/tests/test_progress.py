"""scripts/progress.sh: a long step says it is still working, a failed one says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROGRESS = Path(__file__).resolve().parents[1] / "progress.sh"


def run_steps(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {PROGRESS}; PROGRESS_NAME=t; {script}"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PROGRESS_INTERVAL": "1"})


def test_a_long_step_is_never_silent_and_ends_with_its_time() -> None:
    result = run_steps("step waiting sleep 2.5; echo after")
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines[0] == "t: waiting ..."
    assert any(line.startswith("t: waiting: still working, ") for line in lines[1:-1])
    assert lines[-1].startswith("t: waiting: done in 2.")
    assert result.stdout == "after\n"


def test_a_failed_step_stops_the_script_with_its_status() -> None:
    result = run_steps("step broken bash -c 'exit 3'; echo notreached")
    assert result.returncode == 3
    assert "t: broken: FAILED (status 3)" in result.stderr
    assert "notreached" not in result.stdout
