"""Command mode's initramfs: a cached base (busybox, /init, modules) and a per-run job.

The base depends only on the init scripts, busybox and the kernel's modules,
so it is built once and kept under ``$XDG_CACHE_HOME/pyvmm`` (created 0700,
written through a private temporary file and renamed into place).  The job
(``/job.sh``: the command, its directory, user and environment, the shares
to mount) is a second archive appended to it, as the kernel allows.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

from pyvmm.config.machine import MachineConfig
from pyvmm.config.network import nics
from pyvmm.errors import ConfigError
from pyvmm.host import environment
from pyvmm.command.initramfs.cpio import CpioWriter
from pyvmm.command.initramfs.modules import ModuleSet, find_modules, read_module
from pyvmm.loader.bzimage import kernel_release

#: What command mode needs of the kernel: virtio-mmio, the console ports, virtio-fs, overlay.
WANTED_MODULES = ["virtio_mmio", "virtio_console", "fuse", "virtiofs", "overlay"]


def device_modules(config: MachineConfig) -> list[str]:
    """The drivers of the devices ``config`` gives the guest beyond command mode's own, so
    CMD finds ``/dev/vda`` or ``/dev/hwrng`` without running modprobe (one per device kind)."""
    wanted = []
    if config.drives:
        wanted.append("virtio_blk")
    if config.rng:
        wanted.append("virtio_rng")
    if nics(config.nets):
        wanted.append("virtio_net")
    if config.vsock is not None or config.vsock_auto:
        wanted.append("vmw_vsock_virtio_transport")  # and vsock, its common part
    return wanted
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
#: Format of the cache entries; bump when the layout of the base archive changes.
CACHE_VERSION = "1"


@dataclass(frozen=True)
class Job:
    """One command to run in the guest, and how."""

    argv: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    env: tuple[tuple[str, str], ...]
    rw: bool
    #: (tag, mount point, read-only) of the --share directories.
    mounts: tuple[tuple[str, str, bool], ...] = ()
    #: The host's env(1) and setpriv(1), by absolute path: the busybox that runs
    #: the job would otherwise run its own applets of the same names, and its env
    #: would run busybox's ls, cat, sh... instead of the host's.
    env_binary: str = "/usr/bin/env"
    setpriv_binary: str = "/usr/bin/setpriv"
    #: The guest's name (the host's): empty leaves the kernel's "(none)".
    hostname: str = ""
    #: The host's python3 that runs the exec agent on this vsock port (the guest has a
    #: vsock); empty: no agent.
    agent_python: str = ""
    agent_port: int = 0
    #: MACs (lower case) of the NICs /init brings up without DHCP (--net tap: CMD
    #: gives them their addresses); the others get a lease from passt.
    link_only_macs: tuple[str, ...] = ()

    def script(self) -> str:
        """``/job.sh``: sourced by /init; variables and two functions."""
        q = shlex.quote
        mounts = [f"    mount -t virtiofs {'-o ro ' if ro else ''}{q(tag)} {q('/newroot' + path)} "
                  f"|| fail {q(f'cannot mount the share {path}')}"
                  for tag, path, ro in self.mounts]
        drop = []
        if self.uid != 0 or self.gid != 0:
            groups = (f"--groups={','.join(map(str, self.groups))}" if self.groups
                      else "--clear-groups")
            drop = [self.setpriv_binary, f"--reuid={self.uid}", f"--regid={self.gid}", groups, "--"]
        env = [f"{name}={value}" for name, value in self.env]
        # A session of its own, as sshd and vng give: its `kill 0` spares /init's relays.
        # The same for each command the exec agent runs (inside the new root).
        inner = (["/run/pyvmm/busybox", "setsid", "/run/pyvmm/busybox", "sh", "-c",
                  'cd "$1" || exit 1; shift; exec "$@"', "sh", self.cwd] + drop
                 + [self.env_binary, "-i"] + env)
        command = ["chroot", "/newroot"] + inner + list(self.argv)
        agent = ["chroot", "/newroot", self.agent_python, "-I", "-S", "/run/pyvmm/agent.py",
                 str(self.agent_port)] + inner
        return "\n".join([
            f"PYVMM_RW={int(self.rw)}",
            f"PYVMM_CWD={q(self.cwd)}",
            f"PYVMM_UID={self.uid}",
            f"PYVMM_GID={self.gid}",
            f"PYVMM_HOSTNAME={q(self.hostname)}",
            f"export PYVMM_NET_LINK_ONLY={q(' '.join(self.link_only_macs))}",
            "pyvmm_mount_shares() {", *mounts, "    :", "}",
            "pyvmm_run() {", "    " + " ".join(q(part) for part in command) + " 3>&-", "}",
            "pyvmm_agent() {",
            ("    " + " ".join(q(part) for part in agent) + " 3>&-") if self.agent_python
            else "    :", "}",
            ""])


def _busybox() -> str:
    path = environment.BUSYBOX.get() or next(
        (p for p in BUSYBOX_PATHS if os.path.isfile(p)), "")
    if not path:
        raise ConfigError("no busybox found: install busybox-static")
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    if b"ld-linux" in head or b"/lib64/ld" in head:
        raise ConfigError(f"{path} is linked dynamically: install busybox-static")
    return path


def modules_for(kernel_image: bytes, modules_dir: str | None,
                devices: Sequence[str] = ()) -> ModuleSet | None:
    """The modules to carry (command mode's own, then the ``devices``' drivers): from
    --modules, else /lib/modules/RELEASE if it exists."""
    wanted = WANTED_MODULES + list(devices)
    if modules_dir is not None:
        if not os.path.isdir(modules_dir):
            raise ConfigError(f"--modules {modules_dir}: not a directory")
        return find_modules(modules_dir, wanted)
    release = kernel_release(kernel_image)
    if release and os.path.isdir(f"/lib/modules/{release}"):
        return find_modules(f"/lib/modules/{release}", wanted)
    return None  # a kernel with the drivers built in (or none: /init says which)


def base_archive(modules: ModuleSet | None) -> bytes:
    """busybox, /init and the modules as one newc archive, from the cache when there."""
    busybox = _busybox()
    scripts = resources.files("pyvmm.command.initramfs")
    init = scripts.joinpath("init.sh").read_bytes()
    streams = scripts.joinpath("streams.sh").read_bytes()
    network = scripts.joinpath("network.sh").read_bytes()
    agent = scripts.joinpath("agent.py").read_bytes()
    key = hashlib.sha256(CACHE_VERSION.encode() + init + b"\0" + streams + b"\0" + network
                         + b"\0" + agent)
    for path in [busybox] + [host for _, host in (modules.files if modules else ())]:
        info = os.stat(path)
        key.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    cached = _cache_path(key.hexdigest())
    if cached is not None:
        try:
            fd = os.open(cached, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as stream:
                return stream.read()
        except OSError:
            pass
    writer = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "newroot", "lower", "rw", "modules"):
        writer.directory(directory)
    writer.char_device("dev/console", 5, 1)
    writer.char_device("dev/null", 1, 3, 0o666)
    writer.file("init", init, 0o755)
    writer.file("streams.sh", streams, 0o644)
    writer.file("network.sh", network, 0o755)
    writer.file("agent.py", agent, 0o644)
    with open(busybox, "rb") as stream:
        writer.file("bin/busybox", stream.read(), 0o755)
    if modules:
        for name, host in modules.files:
            writer.file(f"modules/{name}", read_module(host))
        writer.file("modules/order", "".join(f"{name}\n" for name, _ in modules.files).encode())
    archive = writer.finish()
    if cached is not None:
        _store(cached, archive)
    return archive


def job_archive(job: Job) -> bytes:
    writer = CpioWriter()
    writer.file("job.sh", job.script().encode(), 0o644)
    return writer.finish()


def _cache_path(key: str) -> str | None:
    """Our cache directory (made 0700, refused if not ours), or None to build every time."""
    base = environment.CACHE_HOME.get() or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "pyvmm")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
    except OSError:
        return None
    if not os.path.isdir(directory) or os.path.islink(directory) or info.st_uid != os.getuid():
        return None
    return os.path.join(directory, f"initramfs-{key[:32]}.cpio")


def _store(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a private temporary file (0600) renamed into place."""
    try:
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".initramfs-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
