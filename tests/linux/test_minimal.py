"""Our minimal kernel reaches user space under pyvmm, and every way out of it is reported."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyvmm.exitstatus import ExitStatus
from tests.disk_images import partitioned_disk
from tests.integration.conftest import image, run_pyvmm

from .guests import MINIMAL, MINIMAL_PVH, Guest, boot, boot_and_type, pyvmm_args


@pytest.mark.parametrize("guest", [MINIMAL, MINIMAL_PVH], ids=lambda g: g.name)
def test_reaches_init_and_powers_off(guest: Guest) -> None:
    result = boot(pyvmm_args(guest, "echo from-the-guest-$((6*7))", options=("-v",)))
    assert result.guest_lines() == ["from-the-guest-42"]
    assert result.status == ExitStatus.OK, result.stderr
    assert "powered off" in result.stderr


def test_the_kernel_finds_our_platform_acpi_and_a_partitioned_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(partitioned_disk([(2048, 2048), (4096, 2048)], size=4 << 20))
    result = boot(pyvmm_args(MINIMAL_PVH, "dmesg | grep -E 'AML tables|ACPI: PM|vda'; ls /dev/vda2",
                             drives=(disk,), options=("--virtio-announce", "acpi")))
    lines = "\n".join(result.guest_lines())
    assert "ACPI: 1 ACPI AML tables successfully acquired and loaded" in lines
    assert "ACPI: PM: (supports S0 S5)" in lines
    assert "[vda] 8192 512-byte logical blocks" in lines   # capacity from our config
    assert "vda: vda1 vda2" in lines                       # the driver read sector 0
    assert result.guest_lines()[-1] == "/dev/vda2"
    assert result.status == ExitStatus.OK, result.stderr


def test_reboot_is_a_clean_exit() -> None:
    result = boot(pyvmm_args(MINIMAL, "true", extra_append="pyvmm.after=reboot",
                             options=("-v",)))
    assert "pyvmm-init: exit 0" in result.output
    assert result.status == ExitStatus.OK, result.stderr
    assert "reset" in result.stderr or "rebooted" in result.stderr


def test_a_status_written_to_the_debug_exit_port_comes_back() -> None:
    result = boot(pyvmm_args(MINIMAL, r"printf '\003' | dd of=/dev/port bs=1 seek=244"))
    assert "pyvmm-init: ok" in result.output
    assert result.status == 3 << 1 | 1, result.stderr


def test_a_guest_panic_is_status_12_with_a_dump_that_shows_it(tmp_path: Path) -> None:
    dump = tmp_path / "panic.core"
    result = boot(pyvmm_args(MINIMAL, "echo c > /proc/sysrq-trigger",
                             options=("--dump", str(dump))))
    assert "pyvmm-init: ok" in result.output
    assert result.status == ExitStatus.GUEST_PANIC, result.stderr
    log = run_pyvmm("inspect", "dmesg", str(dump), "--system-map",
                    str(image("linux/System.map")))
    assert "Kernel panic - not syncing: sysrq triggered crash" in log.stdout, log.stderr


def test_sigterm_exits_143_with_the_guests_flushed_writes_on_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    run = "printf pyvmm-flushed-data | dd of=/dev/vda conv=fsync 2>/dev/null; echo written; sleep 600"
    proc = subprocess.Popen(pyvmm_args(MINIMAL, run, drives=(disk,)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 240
    while b"written" not in seen and time.monotonic() < deadline:
        chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
        if not chunk:
            break
        seen += chunk
    assert b"written" in seen, seen.decode(errors="replace")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode(errors="replace")
    assert disk.read_bytes().startswith(b"pyvmm-flushed-data")


def test_serial_input_reaches_the_guest_shell() -> None:
    result = boot_and_type(pyvmm_args(MINIMAL, "echo type-now; read line; echo got-$line"),
                           prompt=b"type-now", line=b"hello-guest\n")
    assert "got-hello-guest" in result.output
    assert result.status == ExitStatus.OK, result.stderr
