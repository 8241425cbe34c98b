"""The same guests under QEMU -M microvm print the same: a check of our guests and expectations."""

from __future__ import annotations

from pathlib import Path

import pytest

from .guests import CLOUD, MINIMAL, QEMU_TIMEOUT, Guest, boot, pyvmm_args, qemu_args

CASES = [
    (MINIMAL, 1, "nproc; cat /proc/cmdline | grep -o pyvmm.run; ls /dev/vda"),
    (CLOUD, 2, "nproc; ls /dev/vda; cat /sys/block/vda/size"),
]


@pytest.mark.parametrize("guest,cpus,run", CASES, ids=[c[0].name for c in CASES])
def test_pyvmm_and_qemu_agree(guest: Guest, cpus: int, run: str, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    ours = boot(pyvmm_args(guest, run, cpus=cpus, drives=(disk,)))
    theirs = boot(qemu_args(guest, run, cpus=cpus, drives=(disk,)), timeout=QEMU_TIMEOUT)
    assert theirs.status == 0, theirs.stderr
    assert ours.status == 0, ours.stderr
    assert ours.guest_lines() == theirs.guest_lines()
    assert ours.guest_lines()[0] == str(cpus)
