"""Another command in a running command-mode guest: ``pyvmm exec SOCKET -- CMD``, ``vm.run``.

The host connects ``AF_VSOCK`` to the guest's CID (the control socket names
it) on the agent's port, and speaks the agent's wire format
(``pyvmm.command.initramfs.agent``): the command, its stdin, then stdout,
stderr and the exit status come back apart.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from typing import Callable, Iterable

from pyvmm.command.initramfs.agent import (AGENT_PORT, ARGV, ERROR, EXIT, STATUS, STDERR,
                                           STDIN, STDOUT, MAX_PAYLOAD, AgentProtocolError,
                                           encode_argv, message, read_message)
from pyvmm.errors import PyvmmError

#: How long a client keeps trying to reach an agent that is not listening yet (a guest
#: still booting answers ECONNRESET, one whose driver is not up yet times out).
CONNECT_SECONDS = 60.0
#: Errors that mean "not yet": the guest or its agent is still starting.
_NOT_YET = (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ENODEV,
            errno.EHOSTUNREACH)


class ExecError(PyvmmError):
    """The command could not be run in the guest, or its answer broke off."""

    exit_status = 255


class ExecTimeout(ExecError):
    """The command ran past its time (its connection was closed: the agent killed it)."""


def connect_agent(cid: int, port: int = AGENT_PORT,
                  wait: float = CONNECT_SECONDS) -> socket.socket:
    """A connection to the agent at vsock ``cid``:``port``, tried again for ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as exc:  # no vsock in this kernel (the vsock module)
            raise ExecError(f"no vsock here: {exc.strerror or exc}") from None
        try:
            sock.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
            sock.connect((cid, port))
            sock.settimeout(None)
            return sock
        except OSError as exc:
            sock.close()
            code = errno.ETIMEDOUT if isinstance(exc, TimeoutError) else exc.errno
            if code not in _NOT_YET or time.monotonic() >= deadline:
                raise ExecError(f"no agent answers at vsock {cid}:{port}: "
                                f"{exc.strerror or exc}") from None
            time.sleep(0.2)


def run_over(sock: socket.socket, argv: list[str] | tuple[str, ...],
             stdin: Iterable[bytes], stdout: Callable[[bytes], None],
             stderr: Callable[[bytes], None]) -> int:
    """Run ``argv`` through the agent at the other end of ``sock``; its exit status.

    ``stdin`` is fed from a thread of its own (it may block, as a terminal
    does), then its end is sent.  ExecError if the agent refuses the command
    or the connection ends before the status.
    """
    try:
        request = message(ARGV, encode_argv(list(argv)))
    except ValueError as exc:
        raise ExecError(f"cannot send that command: {exc}") from None
    send_lock = threading.Lock()

    def send(data: bytes) -> None:
        with send_lock:
            sock.sendall(data)

    def feed() -> None:
        try:
            for chunk in stdin:
                for start in range(0, len(chunk), MAX_PAYLOAD):
                    send(message(STDIN, chunk[start:start + MAX_PAYLOAD]))
            send(message(STDIN))
        except OSError:
            pass  # the command ended, and the connection with it

    try:
        send(request)
    except OSError as exc:
        raise ExecError(f"the guest's agent went away: {exc.strerror or exc}") from None
    threading.Thread(target=feed, name="exec-stdin", daemon=True).start()
    reader = sock.makefile("rb")
    try:
        while True:
            try:
                received = read_message(reader)
            except ConnectionResetError:
                # The agent closed with our stdin unread: gone, as at end of stream.
                received = None
            except (AgentProtocolError, OSError) as exc:
                raise ExecError(f"the guest's answer broke off: {exc}") from None
            if received is None:
                raise ExecError("the guest's agent went away before the command ended "
                                "(the guest stopped?)")
            kind, payload = received
            if kind == STDOUT:
                stdout(payload)
            elif kind == STDERR:
                stderr(payload)
            elif kind == EXIT and len(payload) == STATUS.size:
                return STATUS.unpack(payload)[0] & 0xFF
            elif kind == ERROR:
                raise ExecError(payload.decode(errors="replace").strip() or "the agent refused")
            else:
                raise ExecError(f"the guest's agent sent a message pyvmm doesn't know "
                                f"({kind!r}, {len(payload)} bytes)")
    finally:
        reader.close()


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """Whole writes to ``fd``; once its reader is gone (EPIPE), the rest is dropped."""
    broken = [False]

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view and not broken[0]:
            try:
                view = view[os.write(fd, view):]
            except OSError:
                broken[0] = True
    return write


def read_fd(fd: int) -> Iterable[bytes]:
    """Chunks of ``fd`` until its end (none if it can't be read)."""
    try:
        while chunk := os.read(fd, 65536):
            yield chunk
    except OSError:
        return


def exec_in_guest(cid: int, argv: list[str] | tuple[str, ...], stdin: Iterable[bytes],
                  stdout: Callable[[bytes], None], stderr: Callable[[bytes], None],
                  wait: float = CONNECT_SECONDS, timeout: float | None = None) -> int:
    """Run ``argv`` in the command-mode guest at vsock ``cid``; its exit status.

    Past ``timeout`` seconds the connection is closed (the agent kills the
    command) and ExecTimeout raised.
    """
    with connect_agent(cid, wait=wait) as sock:
        expired = threading.Event()
        timer = None
        if timeout is not None:
            def expire() -> None:
                expired.set()
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
        try:
            return run_over(sock, argv, stdin, stdout, stderr)
        except ExecError:
            if expired.is_set():
                raise ExecTimeout(f"the command ran past {timeout:g} s") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
