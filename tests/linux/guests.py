"""The Linux guests the ``linux`` tests boot, under pyvmm and under QEMU microvm.

Each guest is a kernel and an initramfs from images/out/ whose ``/init``
(images/initramfs/init) runs the shell command given as ``pyvmm.run=`` on the
kernel command line (spaces written as commas), prints ``pyvmm-init: exit N``
and powers off.  The same command line boots the same guest under QEMU, so
results can be compared.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from tests.integration.conftest import image, pyvmm_command

#: Keeps the console to what the tests read: the init's lines and errors.
QUIET = "quiet"


@dataclass(frozen=True)
class Guest:
    name: str
    kernel: str      # relative to images/out/
    initrd: str
    console: str     # the guest's console: ttyS0 (built in) or hvc0 (virtio)

    def append(self, run: str, extra: str = "") -> str:
        if "," in run:
            raise ValueError("pyvmm.run= turns commas into spaces: no commas in the command")
        return " ".join(filter(None, [f"console={self.console}", QUIET, extra,
                                      "pyvmm.run=" + run.replace(" ", ",")]))


MINIMAL = Guest("minimal", "linux/bzImage", "initramfs.cpio.gz", "ttyS0")
MINIMAL_PVH = Guest("minimal-pvh", "linux/vmlinux", "initramfs.cpio.gz", "ttyS0")
#: Debian's cloud kernel: virtio drivers are modules (the initramfs loads
#: them), devices are found through ACPI only, the console is virtio's hvc0.
CLOUD = Guest("cloud", "cloud/vmlinuz", "cloud/initramfs.cpio.gz", "hvc0")


@dataclass
class Boot:
    status: int
    output: str      # the guest console
    stderr: str
    seconds: float

    def guest_lines(self) -> list[str]:
        """What the command printed: the lines between the init's markers."""
        text = self.output.replace("\r", "")
        match = re.search(r"pyvmm-init: ok\n(.*?)pyvmm-init: exit \d+", text, re.S)
        assert match, f"no init markers in the console:\n{text[-2000:]}"
        return match.group(1).splitlines()


def pyvmm_args(guest: Guest, run: str, *, cpus: int = 1, drives: tuple[Path, ...] = (),
               extra_append: str = "", options: tuple[str, ...] = ()) -> list[str]:
    args = ["run", "--kernel", str(image(guest.kernel)), "--initrd", str(image(guest.initrd)),
            "--cpus", str(cpus), "--memory", "512M",
            "--append", guest.append(run, extra_append), *options]
    if "--timeout" not in options:  # a hang is a failure with a status, not a stuck test
        args += ["--timeout", "200"]
    if guest.console == "hvc0":
        args += ["--virtio-announce", "acpi"]
    for drive in drives:
        args += ["--drive", f"path={drive}"]
    return pyvmm_command(*args)


def qemu_args(guest: Guest, run: str, *, cpus: int = 1,
              drives: tuple[Path, ...] = ()) -> list[str]:
    args = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm",
            "-cpu", "host", "-m", "512M", "-smp", str(cpus), "-nographic", "-no-reboot",
            "-nodefaults", "-kernel", str(image(guest.kernel)),
            "-initrd", str(image(guest.initrd)), "-append", guest.append(run)]
    if guest.console == "hvc0":
        args += ["-chardev", "stdio,id=con", "-device", "virtio-serial-device",
                 "-device", "virtconsole,chardev=con"]
    else:
        args += ["-serial", "stdio"]
    for index, drive in enumerate(drives):
        args += ["-drive", f"id=d{index},file={drive},format=raw,if=none",
                 "-device", f"virtio-blk-device,drive=d{index}"]
    return args


def boot_and_type(command: list[str], *, prompt: bytes, line: bytes,
                  timeout: float = 300) -> Boot:
    """Boot, and once the guest prints ``prompt``, type ``line`` on its console.

    Input sent earlier may rightly be lost: the 8250 driver clears the UART's
    FIFOs when the port is opened, as a real UART does.
    """
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    try:
        while prompt not in seen and time.monotonic() - start < timeout:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen += chunk
        if prompt in seen:
            proc.stdin.write(line)
            proc.stdin.flush()
        out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - start)))
    finally:
        proc.kill()
    return Boot(proc.returncode, (seen + out).decode(errors="replace"),
                err.decode(errors="replace"), time.monotonic() - start)


#: What QEMU's own failures in the rig are called (QEMU prints nothing for them).
QEMU_TRIPLE_FAULT = "QEMU: the guest triple-faulted (it reset before its init ended; -no-reboot)"
QEMU_HUNG = "QEMU: the guest hung"
#: ``Boot.status`` of a boot that was killed at its timeout.
HUNG = -1
#: Seconds a QEMU boot of these guests may take in the rig (they take 3-11 s).
QEMU_TIMEOUT = 120


def is_qemu(command: list[str]) -> bool:
    return Path(command[0]).name.startswith("qemu")


def boot_once(command: list[str], *, stdin: bytes = b"", timeout: float = 300,
              cwd: Path | None = None) -> Boot:
    """Boot to the end once, never retried.

    A boot killed at ``timeout`` has status ``HUNG`` and says so in
    ``stderr``; a QEMU guest that ends (-no-reboot: status 0) before its
    init's last line reset, which QEMU does not report, so it is named here.
    """
    vmm = "QEMU" if is_qemu(command) else "pyvmm"
    start = time.monotonic()
    try:
        proc = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout,
                              cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        return Boot(HUNG, (exc.stdout or b"").decode(errors="replace"),
                    (exc.stderr or b"").decode(errors="replace")
                    + f"\n{vmm}: the guest hung: no exit in {timeout:g} s",
                    time.monotonic() - start)
    result = Boot(proc.returncode, proc.stdout.decode(errors="replace"),
                  proc.stderr.decode(errors="replace"), time.monotonic() - start)
    if vmm == "QEMU" and proc.returncode == 0 and "pyvmm-init: exit" not in result.output:
        result.stderr += "\n" + QEMU_TRIPLE_FAULT
    return result


def boot(command: list[str], *, stdin: bytes = b"", timeout: float = 300) -> Boot:
    """``boot_once``, retried once in the rig if the guest triple-faulted or QEMU hung."""
    return retried_in_rig(lambda: boot_once(command, stdin=stdin, timeout=timeout),
                          lambda boot: boot.stderr)


class RigSuspectWarning(UserWarning):
    """A guest triple fault inside the rig, retried once and counted apart."""


#: Guest triple faults retried in the rig during this test session.
RIG_SUSPECTS: list[str] = []
Result = TypeVar("Result")


def retried_in_rig(run: Callable[[], Result], stderr_of: Callable[[Result], str]) -> Result:
    """Run ``run``; in the rig, run it once more if the guest triple-faulted (or QEMU's hung).

    Why: in the rig (QEMU TCG emulating SVM), Debian's kernel with 4 vCPUs
    triple-faults under both VMMs in the same sessions, at similar rates
    (bench/rig_soak.py, 44 boots each on an idle host: pyvmm 3, QEMU 2 resets
    and 4 hangs; 29 each on a busy one: pyvmm 0, QEMU 2 resets and 3 hangs),
    at any point of the boot, on a vCPU that was idle or
    running user space: the rig's emulation, not the VMM.  Like the rig's own
    failures it is retried once, and every occurrence is reported (a warning
    in the test summary, and RIG_SUSPECTS for the soak); on hardware KVM it is
    never retried, and a pyvmm hang is never retried.
    """
    result = run()
    stderr = stderr_of(result)
    if os.environ.get("RIG") == "1" and ("the guest triple-faulted" in stderr
                                         or QEMU_HUNG in stderr):
        RIG_SUSPECTS.append(stderr.strip()[-400:])
        warnings.warn(RigSuspectWarning(
            f"rig: the guest triple-faulted or hung; retried once: {stderr.strip()[-400:]}"))
        result = run()
    return result
