#!/usr/bin/env python3
"""The README's demo: boot Debian's own kernel under pyvmm to user space, and exit 0.

    .venv/bin/python scripts/demo.py [--dry-run]

The kernel is the newest Debian kernel installed in /boot (``linux-image-amd64``,
which scripts/host-deps.sh installs); its initramfs is built here in Python,
with pyvmm's cpio writer: busybox, the tests' /init (images/initramfs/init,
which prints ``pyvmm-init: ok`` once it runs, then runs ``pyvmm.run=``) and
the kernel's virtio modules.  Nothing is compiled.

Where /dev/kvm is hardware KVM the demo is ``pyvmm run``; where it is not
(``kvm_pvm``, which runs no Linux user space, or no /dev/kvm) it says so in
one line and runs the same ``pyvmm run`` inside scripts/rig.py, whose
/dev/kvm is SVM KVM under QEMU's TCG; the guest's console shows as it comes
either way.  The exit status is pyvmm's (the rig's, 125 or 126, if the rig
itself failed or can't run here).  ``--dry-run`` prints the command instead.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pyvmm.check.capabilities import judge, linux_runs  # noqa: E402
from pyvmm.check.facts import gather  # noqa: E402
from pyvmm.command.initramfs.cpio import CpioWriter  # noqa: E402
from pyvmm.command.initramfs.modules import find_modules, read_module  # noqa: E402
from pyvmm.errors import PyvmmError  # noqa: E402

OUT = REPO / "images" / "out" / "demo"
#: The guest's /init, shared with the test guests.
INIT = REPO / "images" / "initramfs" / "init"
#: What Debian's kernel needs as modules for pyvmm's virtio devices (and what they need).
MODULES = ["virtio_mmio", "virtio_console", "virtio_blk"]
#: What the demo runs in user space (commas become spaces), then it powers off.
CMDLINE = "console=ttyS0 reboot=k panic=-1 pyvmm.run=uname,-a"


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


class Step:
    """``with Step("what")``: a line when it starts, and how long it took when it ends."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> "Step":
        self.started = time.monotonic()
        say(f"{self.what} ...")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            say(f"{self.what}: done in {time.monotonic() - self.started:.1f} s")


def debian_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> str:
    """The newest release with both /boot/vmlinuz-RELEASE and its modules."""
    releases = [path.name.removeprefix("vmlinuz-") for path in boot.glob("vmlinuz-*")]
    releases = [r for r in releases if (modules / r / "modules.dep").is_file()]
    if not releases:
        raise SystemExit("demo: no Debian kernel with its modules in /boot and /lib/modules: "
                         "apt-get install linux-image-amd64 (scripts/host-deps.sh does)")
    return sorted(releases, key=lambda r: [int(x) if x.isdigit() else x
                                           for x in re.split(r"[.-]", r)])[-1]


def build_initramfs(release: str, busybox: Path = Path("/bin/busybox")) -> Path:
    """busybox, /init and the virtio modules of ``release`` as a newc archive in images/out/demo/."""
    if not busybox.is_file():
        raise SystemExit("demo: no /bin/busybox: apt-get install busybox-static "
                         "(scripts/host-deps.sh does)")
    try:
        modules = find_modules(f"/lib/modules/{release}", MODULES)
    except PyvmmError as error:
        raise SystemExit(f"demo: {error}") from None
    archive = CpioWriter()
    for directory in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    archive.file("init", INIT.read_bytes(), mode=0o755)
    for name, host_path in modules.files:
        archive.file(f"lib/modules/{name}", read_module(host_path))
    archive.file("lib/modules/load-order",
                 "".join(f"{name}\n" for name, _ in modules.files).encode())
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"initramfs-{release}.cpio"
    fd, temporary = tempfile.mkstemp(dir=OUT, prefix=".initramfs-")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(archive.finish())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def why_not_here() -> str | None:
    """None where a Linux guest runs on this /dev/kvm, else the first reason it doesn't."""
    capabilities = judge(gather())
    if linux_runs(capabilities):
        return None
    return next(c.detail for c in capabilities if c.required and not c.ok)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the command, don't run it")
    args = parser.parse_args(argv)
    release = debian_kernel()
    with Step(f"building the guest's initramfs in Python (busybox, /init, the virtio "
              f"modules of Debian's kernel {release})"):
        initrd = build_initramfs(release)
    pyvmm = Path(sys.executable).parent / "pyvmm"
    command = [str(pyvmm) if pyvmm.exists() else "pyvmm", "run",
               "--kernel", f"/boot/vmlinuz-{release}", "--initrd", str(initrd),
               "--append", CMDLINE]
    why = why_not_here()
    if why is not None:
        say(f"{re.split(r', which|; |: ', why)[0]}; the demo runs in the rig instead: "
            "QEMU's TCG with SVM KVM inside (scripts/rig.py; about a minute)")
        command = [sys.executable, str(REPO / "scripts" / "rig.py"), "--", *command]
    say("$ " + shlex.join(command))
    if args.dry_run:
        return 0
    sys.stdout.flush()
    os.execv(command[0] if os.path.isabs(command[0]) else _which(command[0]), command)


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"demo: no {name} on PATH: run bash scripts/install.sh first")
    return found


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
