"""One virtiofsd per shared directory: find it, start it, connect, watch it, stop it.

Two flavours exist with different command lines: the standalone Rust
``virtiofsd`` (on PATH on newer systems; preferred) and QEMU's C one, which
Debian bookworm ships as ``/usr/lib/qemu/virtiofsd`` in qemu-system-common.
Each listens on a unix socket in a private 0700 directory of ours, and is
started, watched and stopped as every back end is (``pyvmm.vhost.process``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from pyvmm.errors import SEE_CHECK, ConfigError, HostError
from pyvmm.host import environment
from pyvmm.vhost.frontend import VhostUserFrontend
from pyvmm.vhost.process import BackendProcess

#: Where QEMU's C virtiofsd lives on Debian (qemu-system-common) and Fedora.
QEMU_VIRTIOFSD = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
#: What to install when there is none.
PACKAGE_HINT = ("no virtiofsd found: install Debian's qemu-system-common "
                "(/usr/lib/qemu/virtiofsd) or the virtiofsd package")


@dataclass(frozen=True)
class Virtiofsd:
    """An installed virtiofsd and which command line it takes."""

    path: str
    flavour: str  # "rust" or "qemu"

    def command(self, socket_path: str, directory: str, readonly: bool,
                sandbox: str = "namespace") -> list[str]:
        """The command line; ``sandbox`` is namespace (default) or chroot (inside a chroot
        or container, where pivot_root fails)."""
        if self.flavour == "rust":
            if os.geteuid() != 0:
                sandbox = "none"
            command = [self.path, "--socket-path", socket_path, "--shared-dir", directory,
                       "--cache", "auto", "--log-level", "warn", "--sandbox", sandbox]
            return command + (["--readonly"] if readonly else [])
        # QEMU 7.2's has no read-only option: the guest mounts such a share read-only.
        return [self.path, f"--socket-path={socket_path}", "-o", f"source={directory}",
                "-o", "cache=auto", "-o", "log_level=warn", "-o", f"sandbox={sandbox}"]


def find_virtiofsd() -> Virtiofsd:
    """The standalone virtiofsd if on PATH, else QEMU's; HostError naming the package."""
    override = environment.VIRTIOFSD.get()
    if override:
        return Virtiofsd(override, "qemu" if "qemu" in override else "rust")
    found = shutil.which("virtiofsd")
    if found:
        return Virtiofsd(found, "rust")
    for path in QEMU_VIRTIOFSD:
        if os.access(path, os.X_OK):
            return Virtiofsd(path, "qemu")
    raise HostError(PACKAGE_HINT + SEE_CHECK)


def check_shared_dir(path: str) -> str:
    """The absolute path of a directory to share; ConfigError if it is not one."""
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ConfigError(f"--share {path}: {what}")
    return os.path.abspath(path)


class VirtiofsdProcess(BackendProcess):
    """A running virtiofsd serving ``directory``, and our connection to it."""

    def __init__(self, binary: Virtiofsd, directory: str, readonly: bool,
                 sandbox: str = "namespace") -> None:
        self.shared_directory = directory
        super().__init__(f"virtiofsd for {directory}", "pyvmm-fs-", lambda private: binary.command(
            os.path.join(private, "vhost-user.sock"), directory, readonly, sandbox))
        self.socket_path = self.path("vhost-user.sock")
        try:
            self.frontend = self.wait_for(
                self.socket_path, lambda path: VhostUserFrontend.connect(path, self.name))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        frontend = getattr(self, "frontend", None)
        if frontend is not None:
            frontend.close()
        self.stop()
