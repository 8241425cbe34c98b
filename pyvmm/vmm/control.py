"""The VMM's control socket: ``pyvmm inspect`` asks a running guest for a live dump,
``pyvmm snapshot`` for a snapshot.

A unix stream socket on the event loop.  One request per connection, one
line: ``dump PATH``; the VMM pauses its vCPUs, writes the dump, resumes them
and answers ``ok SECONDS`` (or ``error MESSAGE``).  ``snapshot PATH`` and
``snapshot-stop PATH`` write a snapshot directory (the second then stops the
guest) and answer ``ok SECONDS RAM_BYTES WRITTEN_BYTES``.  ``vsock`` (no path)
answers ``ok CID``, the guest's vsock address (``pyvmm exec`` connects
there).  PATH is taken byte for
byte (a file name need not be UTF-8) and must be absolute; anything else
(no newline, a second line, a NUL) is refused, never guessed at.  The socket
file is created owner-only and removed when the VMM exits.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Optional

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
#: How long ``pyvmm snapshot`` waits (the guest's RAM is written meanwhile).
SNAPSHOT_ANSWER_SECONDS = 300.0
#: The requests, by their first word.
REQUESTS = (b"dump", b"snapshot", b"snapshot-stop")

#: ``snapshot(directory, stop)``: the reply's words after ``ok``.
SnapshotHandler = Callable[[str, bool], str]


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
    """Listens on ``path``; ``live_dump(path) -> seconds`` and ``snapshot`` do the work."""

    def __init__(self, path: str, live_dump: Callable[[str], float],
                 snapshot: Optional[SnapshotHandler] = None,
                 vsock_cid: int | None = None) -> None:
        self.path = path
        self._live_dump = live_dump
        self._snapshot = snapshot
        self._vsock_cid = vsock_cid
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
            try:
                request = _read_request(connection)
            except OSError:
                return
            try:
                if request == b"vsock\n":
                    if self._vsock_cid is None:
                        raise RequestError("this machine has no vsock (pyvmm exec needs "
                                           "command mode, with --vsock or /dev/vhost-vsock)")
                    reply = f"ok {self._vsock_cid}"
                elif (parsed := parse_line(request))[0] == b"dump":
                    reply = f"ok {self._live_dump(parsed[1]):.3f}"
                elif self._snapshot is None:
                    raise RequestError("this VMM takes no snapshots")
                else:
                    reply = f"ok {self._snapshot(parsed[1], parsed[0] == b'snapshot-stop')}"
            except PyvmmError as exc:
                reply = f"error {exc}"
            try:
                connection.sendall(os.fsencode(reply) + b"\n")
            except OSError:
                pass

    def close(self) -> None:
        self.socket.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class RequestError(PyvmmError):
    """A request that is not one well-formed ``dump PATH`` line (answered ``error ...``)."""


def _read_request(connection: socket.socket) -> bytes:
    """Up to the first newline, at most MAX_REQUEST bytes, within REQUEST_SECONDS in all."""
    deadline = time.monotonic() + REQUEST_SECONDS
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection.settimeout(remaining)
        try:
            chunk = connection.recv(MAX_REQUEST + 1 - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def parse_line(request: bytes) -> tuple[bytes, str]:
    """The command and path of a well-formed ``COMMAND PATH\\n``; RequestError otherwise."""
    line, newline, rest = request.partition(b"\n")
    if not newline:
        raise RequestError("unknown request (expected one line: dump PATH)")
    if rest:
        raise RequestError("one request per connection (a second line came)")
    command, _, path = line.partition(b" ")
    if command not in REQUESTS or not path:
        raise RequestError("unknown request (expected: dump PATH, snapshot[-stop] PATH)")
    if b"\0" in path or not path.startswith(b"/"):
        raise RequestError(f"the {command.decode()} path must be absolute, without NUL bytes")
    return command, os.fsdecode(path)  # the file name's bytes, as the client sent them


def _ask(socket_path: str, request: bytes, timeout: float,
         error: Callable[[str], Exception]) -> tuple[str, str]:
    """Client side: send one request line to the VMM at ``socket_path`` and split its
    one-line answer into status and the rest; ``error`` when no VMM answers in time."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(socket_path)
            client.sendall(request)
            reply = os.fsdecode(client.makefile("rb").readline()).strip()
        except TimeoutError:
            raise error(f"no running pyvmm answered on {socket_path!r} within "
                        f"{timeout:g} s") from None
        except OSError as exc:
            raise error(f"no running pyvmm answers on {socket_path!r}: "
                        f"{exc.strerror or exc}") from None
    status, _, rest = reply.partition(" ")
    return status, rest


def request_dump(socket_path: str, dump_path: str, timeout: float | None = None) -> float:
    """Client side: ask the VMM at ``socket_path`` to dump to ``dump_path``.

    A VMM that does not answer within ``timeout`` (ANSWER_SECONDS) is an error.
    """
    timeout = ANSWER_SECONDS if timeout is None else timeout
    path = os.fsencode(os.path.abspath(dump_path))
    if b"\n" in path:
        raise DumpError(f"dump path {dump_path!r}: a file name with a newline can't be asked for")

    status, rest = _ask(socket_path, b"dump " + path + b"\n", timeout, DumpError)
    if status != "ok":
        raise DumpError(f"the VMM could not dump: {rest or 'no answer'}")
    return float(rest)


def request_vsock(socket_path: str, timeout: float = ANSWER_SECONDS) -> int:
    """Client side: the vsock CID of the guest whose VMM listens at ``socket_path``."""
    status, rest = _ask(socket_path, b"vsock\n", timeout, RequestError)
    if status != "ok" or not rest.isdigit():
        raise RequestError(f"{socket_path}: {rest or 'no answer'}")
    return int(rest)


def request_snapshot(socket_path: str, directory: str, stop: bool = False,
                     timeout: float | None = None) -> tuple[float, int, int]:
    """Client side: ask the VMM at ``socket_path`` for a snapshot in ``directory``.

    Returns (seconds the guest was paused, RAM bytes, bytes written); SnapshotError
    (``pyvmm.snapshot``) when the VMM can't, or doesn't answer within ``timeout``.
    """
    from pyvmm.snapshot import SnapshotError

    timeout = SNAPSHOT_ANSWER_SECONDS if timeout is None else timeout
    path = os.fsencode(os.path.abspath(directory))
    if b"\n" in path:
        raise SnapshotError(f"{directory!r}: a name with a newline can't be asked for")
    command = b"snapshot-stop " if stop else b"snapshot "
    status, rest = _ask(socket_path, command + path + b"\n", timeout, SnapshotError)
    words = rest.split()
    if status != "ok" or len(words) != 3:
        raise SnapshotError(f"the VMM could not take the snapshot: {rest or 'no answer'}")
    return float(words[0]), int(words[1]), int(words[2])
