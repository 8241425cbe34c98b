"""The socket gdb connects to, served on the machine's event loop.

It listens where ``--gdb`` says (``pyvmm.config.values.parse_gdb_address``):
TCP on ``[HOST:]PORT`` (127.0.0.1 unless a host is given) or ``unix:PATH``
(created owner-only; ``bind`` fails on any
existing path, so nothing of someone else's is followed or replaced, and
the socket is removed at exit).  One gdb at a time: a second connection
gets an error packet and is closed.  Everything is non-blocking: replies
wait in a bounded buffer for EPOLLOUT, so a gdb that stops reading costs
neither the loop's time nor unbounded memory; it is dropped, with a log
line, as is a broken packet stream.  A gdb that goes away without
detaching leaves the guest running on, its breakpoints removed.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import traceback
from typing import TYPE_CHECKING

from pyvmm.errors import ConfigError
from pyvmm.config.values import GdbAddress
from pyvmm.gdb.packets import ProtocolError, frame
from pyvmm.gdb.session import Session

if TYPE_CHECKING:
    from pyvmm.eventloop import EventLoop
    from pyvmm.gdb.target import Target

log = logging.getLogger(__name__)

#: Bytes read per readiness event, and the most replies may queue before we give up.
READ_SIZE = 64 << 10
MAX_OUTPUT = 1 << 20


class GdbServer:
    """Listens at ``address``; the one connected gdb drives a ``Session`` over ``target``."""

    def __init__(self, address: GdbAddress, target: Target) -> None:
        self.address = address
        self.target = target
        self._notify_fd = target.notify_fd
        self._loop: EventLoop | None = None
        self._conn: socket.socket | None = None
        self._session: Session | None = None
        self._out = bytearray()
        self._socket_inode: tuple[int, int] | None = None
        self._closed = False
        self.socket = self._listen(address)

    def _listen(self, address: GdbAddress) -> socket.socket:
        if address.unix:
            if os.path.lexists(address.path):
                raise ConfigError(f"--gdb unix:{address.path}: the path exists (remove it "
                                  "if it is a stale socket)")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old_umask = os.umask(0o177)  # the socket file is born 0600
            try:
                sock.bind(address.path)
                st = os.lstat(address.path)
                self._socket_inode = (st.st_dev, st.st_ino)
            except OSError as exc:
                sock.close()
                raise ConfigError(f"--gdb unix:{address.path}: "
                                  f"{exc.strerror or exc}") from None
            finally:
                os.umask(old_umask)
        else:
            try:
                family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address.host, address.port))
            except OSError as exc:
                sock.close()
                raise ConfigError(f"--gdb {address.host}:{address.port}: "
                                  f"{exc.strerror or exc}") from None
        sock.listen(1)
        sock.setblocking(False)
        return sock

    # -- the event loop --------------------------------------------------------------------

    def subscribe(self, loop: EventLoop) -> None:
        self._loop = loop
        loop.add(self.socket.fileno(), self._on_accept)
        loop.add(self._notify_fd, self._on_target)

    def _on_accept(self, _events: int) -> None:
        try:
            conn, _ = self.socket.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        if self._conn is not None:
            log.warning("gdb: refused a second connection (a gdb is attached already)")
            try:
                conn.setblocking(False)
                conn.send(frame(b"E.another gdb is attached to this pyvmm", rle=False))
            except OSError:
                pass
            conn.close()
            return
        conn.setblocking(False)
        self._conn, self._out = conn, bytearray()
        self._session = Session(self.target)
        log.info("gdb: attached on %s", self.address)
        try:
            self._session.attach()
        except Exception as exc:  # noqa: BLE001 - this connection ends, the VM goes on
            self._drop(f"could not stop the vCPUs: {exc}")
            return
        assert self._loop is not None
        self._loop.add(conn.fileno(), self._on_connection)

    def _on_connection(self, events: int) -> None:
        conn, session = self._conn, self._session
        if conn is None or session is None:
            return
        if events & select.EPOLLOUT:
            self._flush()
        if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = conn.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(f"connection failed: {exc.strerror or exc}")
            return
        if not data:
            self._drop("gdb went away" if not session.finished else "")
            return
        try:
            self._send(session.receive(data))
        except ProtocolError as exc:
            self._drop(f"closed a connection that broke the protocol: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the connection ends, never the VMM
            log.debug("gdb command failed:\n%s", traceback.format_exc())
            self._drop(f"closed the connection after an error serving it: {exc}")
            return
        if session.finished:
            self._drop("")

    def _on_target(self, _events: int) -> None:
        try:
            os.eventfd_read(self._notify_fd)
        except BlockingIOError:
            pass
        if self._session is not None:
            try:
                self._send(self._session.target_stopped())
            except Exception as exc:  # noqa: BLE001 - the connection ends, never the VMM
                log.debug("gdb stop report failed:\n%s", traceback.format_exc())
                self._drop(f"closed the connection after an error serving it: {exc}")

    # -- output ------------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not data or self._conn is None:
            return
        self._out += data
        if len(self._out) > MAX_OUTPUT:
            self._drop("gdb does not read its replies")
            return
        self._flush()

    def _flush(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            sent = conn.send(self._out) if self._out else 0
            del self._out[:sent]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._drop(f"connection failed: {exc.strerror or exc}")
            return
        if self._loop is not None:
            self._loop.modify(conn.fileno(), select.EPOLLIN
                              | (select.EPOLLOUT if self._out else 0))

    def _drop(self, why: str) -> None:
        """End the connection; the guest runs on without breakpoints unless gdb killed it."""
        conn, session = self._conn, self._session
        self._conn = self._session = None
        if why:
            log.warning("gdb: %s; the guest runs on", why)
        if session is not None and not session.finished:
            try:
                session.detach()
            except Exception as exc:  # noqa: BLE001 - reported; the VM is not stopped for it
                log.error("gdb: could not let the guest run on: %s", exc)
        if conn is not None:
            if self._loop is not None:
                self._loop.remove(conn.fileno())
            conn.close()

    def close(self, status: int | None) -> None:
        """The machine stopped (with exit ``status``): tell gdb, close everything (once)."""
        if self._closed:
            return
        self._closed = True
        if self._conn is not None and self._session is not None and status is not None:
            try:
                self._conn.setblocking(True)
                self._conn.settimeout(0.2)
                self._conn.sendall(bytes(self._out) + self._session.exited(status))
            except OSError:
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = self._session = None
        self.socket.close()
        self.target.close()
        if self.address.unix and self._socket_inode is not None:
            try:  # only the socket we made, not whatever replaced it
                st = os.lstat(self.address.path)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._socket_inode:
                    os.unlink(self.address.path)
            except FileNotFoundError:
                pass
