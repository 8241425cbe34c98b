"""Virtio devices driven by the tiny vblk / vcon guests: what reaches the disk and console."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import pytest

from pyvmm.exitstatus import ExitStatus

from .conftest import REPO, image, pyvmm_command, run_pyvmm


def pattern_ok(data: bytes, sectors: int) -> bool:
    expected = bytes((s * 7 + i) & 0xFF for s in range(sectors) for i in range(512))
    return data[:sectors * 512] == expected


@pytest.mark.parametrize("kernel", ["tiny/vblk.bzImage", "tiny/vblk.elf"])
def test_guest_writes_reach_the_image(disk, kernel) -> None:
    result = run_pyvmm("run", "-k", str(image(kernel)), "--drive", f"path={disk}",
                       "-a", "console=ttyS0 blktest=write-pattern", "--timeout", "60")
    assert result.status == ExitStatus.OK, result.stdout + result.stderr
    assert "vblk: wrote 2048 sectors" in result.stdout
    assert pattern_ok(disk.read_bytes(), 2048)


def test_guest_reads_what_the_host_wrote(tmp_path) -> None:
    path = tmp_path / "data.img"
    data = os.urandom(320 * 1024)
    path.write_bytes(data)
    result = run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")), "--drive", str(path),
                       "-a", "console=ttyS0 blktest=sha256", "--timeout", "60")
    assert result.status == ExitStatus.OK, result.stderr
    assert f"vblk: sha256 {hashlib.sha256(data).hexdigest()}" in result.stdout


def test_readonly_drive_refuses_guest_writes(tmp_path) -> None:
    path = tmp_path / "ro.img"
    data = os.urandom(64 * 1024)
    path.write_bytes(data)
    path.chmod(0o444)
    result = run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")),
                       "--drive", f"path={path},readonly=on",
                       "-a", "console=ttyS0 blktest=readonly", "--timeout", "60")
    assert result.status == ExitStatus.OK, result.stderr
    assert "vblk: ro-feature 1" in result.stdout
    assert "vblk: write status 1" in result.stdout  # VIRTIO_BLK_S_IOERR
    assert path.read_bytes() == data


def test_serial_and_bounds(disk) -> None:
    for mode, expected in (("getid", "vblk: id disk-42"), ("bounds", "vblk: past-end status 1")):
        result = run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")),
                           "--drive", f"path={disk},serial=disk-42",
                           "-a", f"console=ttyS0 blktest={mode}", "--timeout", "60")
        assert result.status == ExitStatus.OK and expected in result.stdout, result.stdout


def test_second_vmm_cannot_open_a_locked_image(disk) -> None:
    first = subprocess.Popen(pyvmm_command("run", "-k", str(image("tiny/loop.bzImage")),
                                           "--drive", str(disk), "--timeout", "30"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, cwd=REPO)
    try:
        time.sleep(1.0)
        second = run_pyvmm("run", "-k", str(image("tiny/bootcheck.bzImage")),
                           "--drive", str(disk))
        assert second.status == 2
        assert "locked by another process" in second.stderr
    finally:
        first.terminate()
        first.wait(10)


@pytest.mark.parametrize("stop", ["timeout", "sigterm"])
def test_flushed_writes_survive_every_exit(disk, stop) -> None:
    """The guest writes, flushes, then hangs: the VMM is stopped from outside."""
    command = pyvmm_command("run", "-k", str(image("tiny/vblk.bzImage")), "--drive", str(disk),
                            "-a", "console=ttyS0 blktest=write-hang",
                            *(["--timeout", "8"] if stop == "timeout" else []))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    if stop == "sigterm":
        deadline = time.monotonic() + 60
        seen = b""
        assert proc.stdout is not None
        while b"hanging" not in seen and time.monotonic() < deadline:
            seen += os.read(proc.stdout.fileno(), 4096)
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    expected = ExitStatus.TIMEOUT if stop == "timeout" else 128 + signal.SIGTERM
    assert proc.returncode == expected
    assert pattern_ok(disk.read_bytes(), 2048)


def test_virtio_console_as_the_only_console() -> None:
    result = run_pyvmm("run", "-k", str(image("tiny/vcon.bzImage")),
                       "-a", "console=hvc0 contest=echo", "--timeout", "60",
                       stdin=b"typed on the host\n")
    assert result.status == ExitStatus.OK, result.stderr
    assert "vcon: hello from hvc0" in result.stdout
    assert "vcon: got typed on the host" in result.stdout


def test_virtio_console_through_the_api(pyvmm_machine) -> None:
    vm = pyvmm_machine(kernel=image("tiny/vcon.bzImage"), append="console=hvc0 contest=echo",
                       timeout=60)
    vm.console.expect("vcon: hello from hvc0", 60)
    vm.console.write("typed from a test\n")
    vm.console.expect("vcon: got typed from a test", 60)
    assert vm.wait(60).status == ExitStatus.OK


def test_missing_drive_is_bad_input(tmp_path) -> None:
    result = run_pyvmm("run", "-k", str(image("tiny/vblk.bzImage")),
                       "--drive", str(tmp_path / "nope.img"))
    assert result.status == 2
    assert result.stderr.strip().splitlines()[-1].startswith("pyvmm: error: disk image")


def test_an_interrupt_lines_pulse_is_made_in_c_and_fails_once_the_vm_is_closed() -> None:
    """What a device's C thread calls by address (``Vm.irq_line_pulse``): KVM_IRQ_LINE up
    and down on the machine's irqchip, 0; after the VM is closed, -EBADF (the thread
    then signals its irqfd's eventfd instead)."""
    import errno

    from pyvmm.kvm._ffi import ffi
    from pyvmm.kvm.system import Kvm

    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        vm.create_irqchip()
        function, context = vm.irq_line_pulse(5)
        assert vm.irq_line_pulse(5) == (function, context)  # one line, kept by the VM
        pulse = ffi.cast("int (*)(void *)", function)
        assert pulse(ffi.cast("void *", context)) == 0
        assert pulse(ffi.cast("void *", vm.irq_line_pulse(6)[1])) == 0
    finally:
        vm.close()
        kvm.close()
    assert pulse(ffi.cast("void *", context)) == -errno.EBADF


def test_python_makes_the_same_pulse_and_hears_when_kvm_refuses_it() -> None:
    """``Vm.pulse_irq_line``, for a device Python serves (``IrqLineTrigger``): the same
    line's pulse from the calling thread; an OSError once the VM is closed (the trigger
    then writes its irqfd)."""
    import errno

    import pytest

    from pyvmm.kvm.system import Kvm

    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        vm.create_irqchip()
        vm.pulse_irq_line(5)
        line = vm.irq_line_pulse(5)
        vm.pulse_irq_line(5)
        assert vm.irq_line_pulse(5) == line  # the line C threads are handed, shared
    finally:
        vm.close()
        kvm.close()
    with pytest.raises(OSError) as refused:
        vm.pulse_irq_line(5)
    assert refused.value.errno == errno.EBADF
