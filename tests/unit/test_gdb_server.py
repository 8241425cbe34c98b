"""The gdb server on a real event loop and unix socket, over a fake target."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest

from pyvmm.errors import ConfigError
from pyvmm.eventloop import EventLoop
from pyvmm.config.values import GdbAddress
from pyvmm.gdb.packets import frame
from pyvmm.gdb.server import GdbServer
from pyvmm.gdb.session import MAX_BREAKPOINTS, Session
from pyvmm.gdb.target import Stop

from tests.unit.gdb_fake import FakeTarget


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "gdb.sock"
        self.target = FakeTarget()
        self.target.notify_fd = os.eventfd(0, os.EFD_NONBLOCK)
        self.loop = EventLoop()
        self.server = GdbServer(GdbAddress(True, path=str(self.path)), self.target)
        self.server.subscribe(self.loop)

    def spin(self, seconds: float = 0.1) -> None:
        self.loop.run(time.monotonic() + seconds)

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(self.path))
        client.setblocking(False)
        self.spin()
        return client

    def read(self, client: socket.socket) -> bytes:
        self.spin()
        try:
            return client.recv(1 << 20)
        except BlockingIOError:
            return b"<nothing>"

    def close(self) -> None:
        self.server.close(0)
        if self.loop.wake_fd >= 0:
            self.loop.close()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_socket_is_private_and_removed(rig: Rig) -> None:
    assert stat.S_IMODE(os.lstat(rig.path).st_mode) == 0o600
    rig.close()
    assert not rig.path.exists()


def test_an_existing_path_is_refused_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "x").symlink_to("/etc/passwd")
    target = FakeTarget()
    with pytest.raises(ConfigError, match="the path exists"):
        GdbServer(GdbAddress(True, path=str(tmp_path / "x")), target)
    assert os.readlink(tmp_path / "x") == "/etc/passwd"


def test_a_session_then_a_stop_reported_through_the_notify_fd(rig: Rig) -> None:
    client = rig.connect()
    assert rig.target.stop_alls == 1  # attached: the guest is held
    client.send(frame(b"?"))
    assert rig.read(client) == b"+" + frame(b"T05thread:1;")
    client.send(frame(b"c"))
    assert rig.read(client) == b"+"
    rig.target.pending.append(Stop(1))
    os.eventfd_write(rig.target.notify_fd, 1)
    assert rig.read(client) == frame(b"T05thread:2;")
    rig.server.close(7)
    assert client.recv(100) == frame(b"W07")


def test_second_connection_refused_first_kept(rig: Rig) -> None:
    first = rig.connect()
    second = rig.connect()
    assert b"another gdb is attached" in rig.read(second)
    assert second.recv(10) == b""
    first.send(frame(b"qC"))
    assert rig.read(first) == b"+" + frame(b"QC1")


def test_a_hostile_stream_closes_the_connection_and_lets_the_guest_go(rig: Rig) -> None:
    client = rig.connect()
    client.send(b"$" + b"A" * 40000)
    rig.spin()
    assert rig.read(client) == b""  # closed
    assert rig.target.resumed[-1] == ({0: "c", 1: "c"}, None)  # detached: the guest runs
    again = rig.connect()  # and the next gdb is welcome
    again.send(frame(b"qC"))
    assert rig.read(again) == b"+" + frame(b"QC1")


def test_a_target_error_ends_the_connection_not_the_loop(rig: Rig) -> None:
    client = rig.connect()

    def broken(cpu: int) -> dict[str, int]:
        raise OSError("KVM_GET_REGS failed")

    rig.target.registers = broken  # type: ignore[method-assign]
    client.send(frame(b"g"))
    assert rig.read(client) == b""  # closed
    again = rig.connect()
    again.send(frame(b"qC"))
    assert rig.read(again) == b"+" + frame(b"QC1")


def test_gdb_going_away_lets_the_guest_run_on(rig: Rig) -> None:
    client = rig.connect()
    client.send(frame(b"Z0,1000,1"))
    rig.spin()
    client.close()
    rig.spin()
    assert rig.target.resumed[-1] == ({0: "c", 1: "c"}, None)
    assert rig.target.memory.read(0x1000, 1) == b"\0"  # the int3 taken out


def test_breakpoints_are_bounded() -> None:
    session = Session(FakeTarget())
    for address in range(MAX_BREAKPOINTS):
        session.receive(frame(b"Z0,%x,1" % (0x10000 + address)))
    assert session.receive(frame(b"Z0,1000,1")) == b"+" + frame(b"E1c")
