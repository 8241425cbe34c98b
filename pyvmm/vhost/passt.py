"""One passt per ``--net user`` NIC: find it, start it on a socketpair, stop it.

passt (Debian's ``passt``) is user-mode networking without root: it answers
the guest's DHCP, DNS, NDP and ARP itself and carries its TCP and UDP
through host sockets; the gateway address it gives the guest reaches the
host's loopback.  Bookworm's passt (2023-03) speaks QEMU's stream protocol
(``pyvmm.vhost.stream``) on a connected socket handed over with ``--fd``,
so each NIC gets a ``socketpair``: no path in a shared directory, nothing to
remove.  Its log goes to a 0600 file in a private 0700 directory, so a
failure is told in one line without its chatter on the guest's console.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from typing import Sequence

from pyvmm.errors import SEE_CHECK, ConfigError, HostError
from pyvmm.host import environment

#: The MTU passt offers over DHCP and NDP (its default: 65520, the largest
#: 802.3 frame less its header, in 32-bit words); the NIC says the same.
PASST_MTU = 65520
PACKAGE_HINT = "--net user needs passt: apt-get install passt"
#: Lines passt writes that say nothing about a failure.
_NOISE = ("Failed to send", "Don't run as root")


def find_passt() -> str:
    """The passt to run; ConfigError (exit 2, before anything starts) if there is none."""
    override = environment.PASST.get()
    found = override if override and os.access(override, os.X_OK) else \
        None if override else shutil.which("passt")
    if found is None:
        missing = f" ({override} is not an executable)" if override else ""
        raise ConfigError(f"{PACKAGE_HINT}{missing}{SEE_CHECK}")
    return found


def passt_command(binary: str, fd: int, forwards: Sequence[tuple[str, str]]) -> list[str]:
    """passt in the foreground on ``fd``, errors to stderr; ``forwards`` are ("tcp"|"udp",
    passt's port spec)."""
    command = [binary, "--foreground", "--quiet", "--stderr", "--fd", str(fd)]
    for protocol, spec in forwards:
        command += ["--tcp-ports" if protocol == "tcp" else "--udp-ports", spec]
    return command


class PasstProcess:
    """A running passt and our end of its socket (``sock``)."""

    def __init__(self, binary: str, forwards: Sequence[tuple[str, str]], name: str) -> None:
        self.name = name
        self._dir = tempfile.mkdtemp(prefix="pyvmm-net-")  # 0700
        self._log_path = os.path.join(self._dir, "passt.log")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_fd = -1
        try:
            log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self.process = subprocess.Popen(
                passt_command(binary, theirs.fileno(), forwards),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_fd,
                pass_fds=(theirs.fileno(),),
                start_new_session=True)  # a Ctrl-C on the terminal is for pyvmm, not for it
        except OSError as exc:
            ours.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise HostError(f"cannot start {binary}: {exc.strerror or exc}") from None
        finally:
            theirs.close()
            if log_fd >= 0:
                os.close(log_fd)
        self.sock = ours

    def last_words(self) -> str:
        """``: <its last log line that says something>``, or nothing."""
        try:
            with open(self._log_path, "rb") as stream:
                text = stream.read()[-4096:].decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.strip().startswith(_NOISE)]
        return f": {lines[-1]}" if lines else ""

    def death_reason(self) -> str:
        """One line for a passt whose socket went away."""
        try:
            status = self.process.wait(0.5)
            how = f"exited with status {status}" if status >= 0 else \
                f"was killed by signal {-status}"
        except subprocess.TimeoutExpired:
            how = "closed its socket"
        return f"{self.name} {how}{self.last_words()}"

    def close(self) -> None:
        """Close our end (passt exits when it sees that), and make sure it has."""
        self.sock.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
