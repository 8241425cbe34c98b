"""One passt per ``--net user`` NIC: find it, start it on a socketpair, stop it.

passt (Debian's ``passt``) is user-mode networking without root: it answers
the guest's DHCP, DNS, NDP and ARP itself and carries its TCP and UDP
through host sockets; the gateway address it gives the guest reaches the
host's loopback.  Bookworm's passt (2023-03) speaks QEMU's stream protocol
(``pyvmm.vhost.stream``) on a connected socket handed over with ``--fd``,
so each NIC gets a ``socketpair``: no path in a shared directory, nothing to
remove.  It runs as the other back ends do (``pyvmm.vhost.process``): its log
in a private directory, so a failure is told in one line.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Sequence

from pyvmm.errors import SEE_CHECK, ConfigError
from pyvmm.host import environment
from pyvmm.vhost.process import BackendProcess

#: The MTU passt offers over DHCP and NDP (its default: 65520, the largest
#: 802.3 frame less its header, in 32-bit words); the NIC says the same.
PASST_MTU = 65520
PACKAGE_HINT = "--net user needs passt: apt-get install passt"
#: The send buffer each end of the socketpair asks for: room for dozens of 64 KiB frames
#: per wake-up (Linux's default, 208 KiB, holds three).  The kernel grants up to
#: net.core.wmem_max, or all of it to a process with CAP_NET_ADMIN (SO_SNDBUFFORCE).
SOCKET_BUFFER = 4 << 20
#: <asm-generic/socket.h>; Python's socket module doesn't name it.
_SO_SNDBUFFORCE = 32
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


def grow_send_buffer(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for ``size`` bytes of send buffer: a stream socket's sender is held back by
    its own buffer alone, so passt's end bounds what it sends per wake-up, ours what a
    transmit pass hands passt before the chains wait on the ring."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)  # up to wmem_max


class PasstProcess:
    """A running passt and our end of its socket (``sock``)."""

    def __init__(self, binary: str, forwards: Sequence[tuple[str, str]], name: str) -> None:
        self.name = name
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (ours, theirs):
                grow_send_buffer(end)
            self._backend = BackendProcess(
                name, "pyvmm-net-", lambda _: passt_command(binary, theirs.fileno(), forwards),
                pass_fds=(theirs.fileno(),), noise=_NOISE, lost="closed its socket")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process = self._backend.process
        self._dir = self._backend.directory
        self.sock = ours

    def last_words(self) -> str:
        """``: <its last log line that says something>``, or nothing."""
        return self._backend.last_words()

    def death_reason(self) -> str:
        """One line for a passt whose socket went away."""
        return self._backend.death_reason()

    def close(self) -> None:
        """Close our end (passt exits when it sees that), and make sure it has."""
        self.sock.close()
        self._backend.stop()
