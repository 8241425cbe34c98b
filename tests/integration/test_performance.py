"""What --stats reports about a real run, and how the console path behaves under load."""

from __future__ import annotations

import json

from .conftest import image, run_pyvmm


def stats_of(stderr: str) -> dict:
    line = next(line for line in stderr.splitlines() if line.startswith('{"pyvmm_stats"'))
    return json.loads(line)["pyvmm_stats"]


def test_stats_count_the_console_exits_of_a_tiny_guest() -> None:
    result = run_pyvmm("run", "--kernel", str(image("tiny/bootcheck.bzImage")),
                       "--append", "console=ttyS0", "--timeout", "60", "--stats=json")
    assert result.status == 0, result.stderr
    assert "pyvmm-tiny: done" in result.stdout
    stats = stats_of(result.stderr)
    startup = stats["startup_s"]
    assert 0 < startup["pyvmm_imported"] < startup["cli_parsed"] < startup["machine_built"] \
        <= startup["first_kvm_run"] < 30
    # The tiny guest polls LSR before each byte it writes: one read of 0x3fd per byte.
    polls = next(row for row in stats["by_address"]
                 if row["kind"] == "pio-in" and row["address"] == 0x3FD)
    assert polls["count"] >= len("pyvmm-tiny: done")
    assert stats["exits"] == sum(row["count"] for row in stats["by_address"])


def test_stats_text_goes_to_stderr_only() -> None:
    result = run_pyvmm("run", "--kernel", str(image("tiny/bootcheck.bzImage")),
                       "--append", "console=ttyS0", "--timeout", "60", "--stats")
    assert result.status == 0
    assert "pyvmm stats:" in result.stderr and "pyvmm stats" not in result.stdout
    assert "0x3fd" in result.stderr
