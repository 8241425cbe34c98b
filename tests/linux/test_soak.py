"""Boot after boot: a race that shows once in twenty boots is a bug.

Each boot must finish within a bound set from QEMU's time on the same guest
(measured in the same session), with ``--dump-on timeout`` so a hang leaves a
core to inspect (kept in $RIG_JOB/dumps when run in the rig).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest

from .guests import CLOUD, MINIMAL, QEMU_TIMEOUT, RIG_SUSPECTS, Guest, boot, pyvmm_args, qemu_args

BOOTS = int(os.environ.get("PYVMM_SOAK_BOOTS", "20"))
CASES = [(MINIMAL, 1), (CLOUD, 2)]


@pytest.mark.parametrize("guest,cpus", CASES, ids=[f"{g.name}-{c}cpu" for g, c in CASES])
def test_boots_in_a_row(guest: Guest, cpus: int, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    dumps = Path(os.environ["RIG_JOB"]) / "dumps" if "RIG_JOB" in os.environ else tmp_path
    dumps.mkdir(parents=True, exist_ok=True)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    run = "nproc; dd if=/dev/vda bs=4096 count=1 2>/dev/null | wc -c"
    reference = boot(qemu_args(guest, run, cpus=cpus, drives=(disk,)), timeout=QEMU_TIMEOUT)
    assert reference.status == 0, reference.stderr
    bound = 3 * reference.seconds + 15
    failures, times = [], []
    suspects_before = len(RIG_SUSPECTS)
    for attempt in range(BOOTS):
        dump = dumps / f"soak-{guest.name}-{attempt}.core"
        result = boot(pyvmm_args(guest, run, cpus=cpus, drives=(disk,), options=(
            "--timeout", f"{bound:.0f}", "--dump", str(dump), "--dump-on", "timeout",
            "--dump-on", "panic")), timeout=bound + 60)
        times.append(result.seconds)
        lines = result.guest_lines() if "pyvmm-init: exit" in result.output else None
        if result.status != 0 or lines != [str(cpus), "4096"]:
            failures.append(f"boot {attempt}: status {result.status}, lines {lines}, "
                            f"{result.stderr.strip()[-300:]}\nconsole tail:\n{result.output[-1500:]}")
    with capsys.disabled():
        print(f"\nsoak {guest.name} {cpus} vCPU: {BOOTS} boots, {len(failures)} failed; "
              f"pyvmm median {statistics.median(times):.1f} s, slowest {max(times):.1f} s; "
              f"QEMU {reference.seconds:.1f} s; bound {bound:.0f} s; "
              f"{len(RIG_SUSPECTS) - suspects_before} guest triple faults in the rig, retried")
    assert not failures, "\n".join(failures)
