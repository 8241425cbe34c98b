"""The VMM's control socket: ``pyvmm inspect`` asks a running guest for a live dump.

A unix stream socket on the event loop.  One request per connection, one
line: ``dump PATH``; the VMM pauses its vCPUs, writes the dump, resumes them
and answers ``ok SECONDS`` (or ``error MESSAGE``).  The socket file is
created owner-only and removed when the VMM exits.
"""

from __future__ import annotations

import os
import socket
from typing import Callable

from pyvmm.dump import DumpError
from pyvmm.errors import ConfigError, PyvmmError

#: Longest request line we read.
MAX_REQUEST = 4096
#: Longest unix socket path (sun_path is 108 bytes, with its terminating NUL).
MAX_SOCKET_PATH = 107
#: How long the VMM waits for a connected client's request line.
REQUEST_SECONDS = 0.5
#: How long ``pyvmm inspect`` waits for a running VMM to answer.
ANSWER_SECONDS = 10.0


def check_control_path(path: str) -> None:
    """ConfigError unless a control socket can be created at ``path``."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"--control {path!r}: a unix socket path is at most "
                          f"{MAX_SOCKET_PATH} bytes")
    if os.path.lexists(path):
        raise ConfigError(f"--control {path!r} already exists (another VMM, or stale: "
                          "remove it)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"--control {path!r}: no directory {directory!r}")


class ControlServer:
    """Listens on ``path``; ``live_dump(path) -> seconds`` does the work."""

    def __init__(self, path: str, live_dump: Callable[[str], float]) -> None:
        self.path = path
        self._live_dump = live_dump
        check_control_path(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)
        try:
            self.socket.bind(path)
        except OSError as exc:
            self.socket.close()
            raise ConfigError(f"--control {path!r}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        self.socket.listen(4)

    @property
    def fd(self) -> int:
        return self.socket.fileno()

    def on_ready(self, _events: int) -> None:
        """Serve one connection (called by the event loop)."""
        connection, _ = self.socket.accept()
        with connection:
            connection.settimeout(REQUEST_SECONDS)
            try:
                request = connection.recv(MAX_REQUEST).decode(errors="replace").strip()
            except OSError:
                return
            command, _, argument = request.partition(" ")
            if command != "dump" or not argument:
                reply = "error unknown request (expected: dump PATH)"
            else:
                try:
                    reply = f"ok {self._live_dump(argument):.3f}"
                except PyvmmError as exc:
                    reply = f"error {exc}"
            try:
                connection.sendall(reply.encode() + b"\n")
            except OSError:
                pass

    def close(self) -> None:
        self.socket.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def request_dump(socket_path: str, dump_path: str, timeout: float | None = None) -> float:
    """Client side: ask the VMM at ``socket_path`` to dump to ``dump_path``.

    A VMM that does not answer within ``timeout`` (ANSWER_SECONDS) is an error.
    """
    timeout = ANSWER_SECONDS if timeout is None else timeout

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(socket_path)
            client.sendall(f"dump {os.path.abspath(dump_path)}\n".encode())
            reply = client.makefile().readline().strip()
        except TimeoutError:
            raise DumpError(f"no running pyvmm answered on {socket_path!r} within "
                            f"{timeout:g} s") from None
        except OSError as exc:
            raise DumpError(f"no running pyvmm answers on {socket_path!r}: "
                            f"{exc.strerror or exc}") from None
    status, _, rest = reply.partition(" ")
    if status != "ok":
        raise DumpError(f"the VMM could not dump: {rest or 'no answer'}")
    return float(rest)
