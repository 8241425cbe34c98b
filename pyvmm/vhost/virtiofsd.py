"""One virtiofsd per shared directory: find it, start it, connect, watch it, stop it.

Two flavours exist with different command lines: the standalone Rust
``virtiofsd`` (on PATH on newer systems; preferred) and QEMU's C one, which
Debian bookworm ships as ``/usr/lib/qemu/virtiofsd`` in qemu-system-common.
Each listens on a unix socket in a private 0700 directory of ours; its log
goes to a file there, so that a failure can be told in one line without
mixing its chatter into the command's stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from pyvmm.errors import SEE_CHECK, ConfigError, HostError
from pyvmm.host import environment
from pyvmm.vhost.frontend import VhostUserFrontend

#: Where QEMU's C virtiofsd lives on Debian (qemu-system-common) and Fedora.
QEMU_VIRTIOFSD = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
#: What to install when there is none.
PACKAGE_HINT = ("no virtiofsd found: install Debian's qemu-system-common "
                "(/usr/lib/qemu/virtiofsd) or the virtiofsd package")
#: How long a starting virtiofsd may take to listen.
START_SECONDS = 10.0


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


class VirtiofsdProcess:
    """A running virtiofsd serving ``directory``, and our connection to it."""

    def __init__(self, binary: Virtiofsd, directory: str, readonly: bool,
                 sandbox: str = "namespace") -> None:
        self.directory = directory
        self.name = f"virtiofsd for {directory}"
        self._dir = tempfile.mkdtemp(prefix="pyvmm-fs-")  # 0700, O_EXCL-style
        self.socket_path = os.path.join(self._dir, "vhost-user.sock")
        self._log_path = os.path.join(self._dir, "virtiofsd.log")
        log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        try:
            self.process = subprocess.Popen(
                binary.command(self.socket_path, directory, readonly, sandbox),
                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, close_fds=True,
                start_new_session=True)  # a Ctrl-C on the terminal is for pyvmm, not for it
        except OSError as exc:
            os.close(log_fd)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise HostError(f"cannot start {binary.path}: {exc.strerror}") from None
        os.close(log_fd)
        try:
            self.frontend = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> VhostUserFrontend:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise HostError(f"{self.name} exited with status {self.process.returncode}"
                                f"{self.last_words()}")
            if os.path.exists(self.socket_path):
                try:
                    return VhostUserFrontend.connect(self.socket_path, self.name)
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            if time.monotonic() > deadline:
                raise HostError(f"{self.name} did not listen within {START_SECONDS:g} s"
                                f"{self.last_words()}")
            time.sleep(0.01)

    def last_words(self) -> str:
        """``: <its last log line>``, or nothing."""
        try:
            with open(self._log_path, "rb") as stream:
                lines = [line for line in stream.read()[-4096:].decode(errors="replace")
                         .splitlines() if line.strip()]
        except OSError:
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def death_reason(self) -> str:
        """One line for a back end whose connection went away."""
        try:
            status = self.process.wait(0.5)
            how = f"exited with status {status}" if status >= 0 else f"was killed by signal {-status}"
        except subprocess.TimeoutExpired:
            how = "closed its connection"
        return f"{self.name} {how}{self.last_words()}"

    def close(self) -> None:
        frontend = getattr(self, "frontend", None)
        if frontend is not None:
            frontend.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
