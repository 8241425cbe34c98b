"""Command mode's exec agent: runs commands the host sends over vsock (``pyvmm exec``).

Command mode's /init starts it when the guest has a vsock, with the guest's
python3 (the host's, seen through the root share; standard library only,
``-I -S``), as ``agent.py PORT PREFIX...``: it listens on vsock port PORT,
and runs each command it is sent as ``PREFIX + argv`` (the job's directory,
user and environment, as the main command gets them).  The host side
(``pyvmm.command.exec``) imports the framing from here, so it is declared
once.

The wire format, on one SOCK_STREAM connection per command.  Every message
is a 1-byte type, a 4-byte big-endian payload length (at most
``MAX_PAYLOAD``) and the payload:

==========  =========  ======================================================
direction   type       payload
==========  =========  ======================================================
host→guest  ``a``      the command: each argument followed by a NUL byte;
                       first, and once
host→guest  ``0``      bytes for the command's stdin; empty: end of stdin
guest→host  ``1``      bytes the command wrote to stdout
guest→host  ``2``      bytes the command wrote to stderr
guest→host  ``x``      its exit status, 4 bytes big-endian (0-255; 128+N for
                       signal N, as a shell's ``$?``); last, once its
                       stdout and stderr have ended
guest→host  ``e``      a UTF-8 line: why the command could not run (bad
                       request, no such program); last
==========  =========  ======================================================

The host closing the connection before ``x`` kills the command (its session:
PREFIX starts one, whose leader is the process the agent started).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import IO, BinaryIO

#: The vsock port the agent listens on (in the guest).
AGENT_PORT = 28793
HEADER = struct.Struct(">cI")
STATUS = struct.Struct(">I")
ARGV, STDIN, STDOUT, STDERR, EXIT, ERROR = b"a", b"0", b"1", b"2", b"x", b"e"
#: Largest payload of one message; a command line is at most this long.
MAX_PAYLOAD = 1 << 20
#: How much output one message carries.
CHUNK = 64 << 10


class AgentProtocolError(Exception):
    """A message that breaks the wire format."""


def read_message(stream: BinaryIO) -> tuple[bytes, bytes] | None:
    """The next (type, payload) from ``stream``; None at its end between messages."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise AgentProtocolError("the connection ended inside a message header")
    kind, length = HEADER.unpack(header)
    if length > MAX_PAYLOAD:
        raise AgentProtocolError(f"a message of {length} bytes (at most {MAX_PAYLOAD})")
    payload = stream.read(length)
    if len(payload) < length:
        raise AgentProtocolError("the connection ended inside a message")
    return kind, payload


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_argv(argv: list[str] | tuple[str, ...]) -> bytes:
    """The ``a`` payload; ValueError for an empty command or a NUL in an argument."""
    if not argv:
        raise ValueError("no command given")
    parts = [os.fsencode(arg) for arg in argv]
    if any(b"\0" in part for part in parts):
        raise ValueError("an argument holds a NUL byte")
    payload = b"".join(part + b"\0" for part in parts)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"the command line is longer than {MAX_PAYLOAD} bytes")
    return payload


def decode_argv(payload: bytes) -> list[bytes]:
    if not payload or not payload.endswith(b"\0"):
        raise AgentProtocolError("the command must be NUL-terminated arguments")
    return payload[:-1].split(b"\0")


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell's ``$?``."""
    return 128 - returncode if returncode < 0 else returncode & 0xFF


class _Connection:
    """One command: its request, its process, its output relayed back."""

    def __init__(self, sock: socket.socket, prefix: list[bytes]) -> None:
        self.sock = sock
        self.prefix = prefix
        self.reader = sock.makefile("rb")
        self.send_lock = threading.Lock()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        with self.send_lock:
            self.sock.sendall(message(kind, payload))

    def serve(self) -> None:
        try:
            first = read_message(self.reader)
            if first is None or first[0] != ARGV:
                raise AgentProtocolError("the first message must be the command (a)")
            argv = decode_argv(first[1])
        except (AgentProtocolError, OSError) as exc:
            self._fail(str(exc))
            return
        try:
            process = subprocess.Popen(self.prefix + argv, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self._fail(f"cannot run {os.fsdecode(argv[0])}: {exc.strerror or exc}")
            return
        assert process.stdin and process.stdout and process.stderr
        relays = [threading.Thread(target=self._relay, args=(process.stdout, STDOUT)),
                  threading.Thread(target=self._relay, args=(process.stderr, STDERR))]
        for relay in relays:
            relay.start()
        feeder = threading.Thread(target=self._feed, args=(process,), daemon=True)
        feeder.start()
        status = exit_status(process.wait())
        for relay in relays:
            relay.join()
        try:
            self.send(EXIT, STATUS.pack(status))
            self.sock.shutdown(socket.SHUT_RD)  # the feeder reads to its end, then stops
        except OSError:
            pass
        feeder.join(5)

    def _relay(self, pipe: BinaryIO, kind: bytes) -> None:
        while chunk := os.read(pipe.fileno(), CHUNK):
            try:
                self.send(kind, chunk)
            except OSError:
                pass  # the host left: drain, so the command is not stuck on a full pipe
        pipe.close()

    def _feed(self, process: subprocess.Popen) -> None:
        """The host's stdin messages to the command; the host gone kills the command."""
        stdin: IO[bytes] | None = process.stdin
        try:
            while (received := read_message(self.reader)) is not None:
                kind, payload = received
                if kind != STDIN:
                    raise AgentProtocolError(f"unexpected message {kind!r} after the command")
                if stdin is None:
                    continue  # ended, or the command closed it: the rest is dropped
                try:
                    if payload:
                        stdin.write(payload)
                        stdin.flush()
                        continue
                except BrokenPipeError:
                    pass
                _close_quietly(stdin)
                stdin = None
        except (AgentProtocolError, OSError, ValueError):  # ValueError: closed under us
            pass
        if stdin is not None:
            _close_quietly(stdin)
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass

    def _fail(self, why: str) -> None:
        try:
            self.send(ERROR, why.encode(errors="replace"))
        except OSError:
            pass

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _close_quietly(pipe: IO[bytes]) -> None:
    try:
        pipe.close()
    except OSError:
        pass


def serve_connection(sock: socket.socket, prefix: list[bytes]) -> None:
    """Run the command ``sock`` sends (any stream socket: tests use a socketpair)."""
    connection = _Connection(sock, prefix)
    try:
        connection.serve()
    finally:
        connection.close()


def serve(port: int, prefix: list[bytes]) -> None:
    """Accept connections on vsock ``port`` for ever, a thread per command."""
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, port))
    listener.listen(16)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(sock, prefix), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: agent.py PORT PREFIX...", file=sys.stderr)
        return 2
    try:
        serve(int(argv[0]), [os.fsencode(arg) for arg in argv[1:]])
    except OSError as exc:
        print(f"pyvmm-agent: error: vsock port {argv[0]}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
