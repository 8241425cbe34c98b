"""The control socket takes one well-formed ``dump PATH`` line, byte for byte, or refuses.

It decoded requests with ``errors="replace"``: a non-UTF-8 dump path was written
to another name, and a second request line became part of the path.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from pyvmm.dump.core import write_core
from pyvmm.dump.state import VcpuRegisters
from pyvmm.memory import GuestMemory
from pyvmm.vmm.control import ControlServer, request_dump


@pytest.fixture
def server(tmp_path):
    asked: list[str] = []

    def live_dump(path: str) -> float:
        asked.append(path)
        return 0.25
    control = ControlServer(str(tmp_path / "vmm.sock"), live_dump)
    yield control, asked
    control.close()


def ask(control: ControlServer, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(control.path)
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        control.on_ready(0)
        return client.makefile("rb").readline()


def test_a_non_utf8_path_is_kept_byte_for_byte(server) -> None:
    control, asked = server
    assert ask(control, b"dump /tmp/guest-\xff\xfe.core\n") == b"ok 0.250\n"
    assert [os.fsencode(path) for path in asked] == [b"/tmp/guest-\xff\xfe.core"]


def test_a_path_with_spaces_is_kept_whole(server) -> None:
    control, asked = server
    assert ask(control, b"dump /tmp/a b .core\n").startswith(b"ok")
    assert asked == ["/tmp/a b .core"]


@pytest.mark.parametrize("request_, why", [
    (b"dump /tmp/a.core\ndump /tmp/b.core\n", b"one request per connection"),
    (b"dump /tmp/a.core", b"expected one line"),
    (b"dump relative.core\n", b"must be absolute"),
    (b"dump /tmp/a\0b\n", b"without NUL"),
    (b"dump \n", b"unknown request"),
    (b"frobnicate /x\n", b"unknown request"),
    (b"dump /" + b"a" * 5000 + b"\n", b"expected one line"),
], ids=["two-lines", "no-newline", "relative", "nul", "empty-path", "unknown", "too-long"])
def test_what_is_not_one_request_is_refused(server, request_: bytes, why: bytes) -> None:
    control, asked = server
    reply = ask(control, request_)
    assert reply.startswith(b"error ") and why in reply, reply
    assert asked == []


def test_request_dump_writes_the_exact_non_utf8_name_and_refuses_a_fifo(tmp_path) -> None:
    memory = GuestMemory.from_bytes(1 << 20)
    vcpu = VcpuRegisters(0, {"rip": 0x1000})
    control = ControlServer(str(tmp_path / "vmm.sock"),
                            lambda path: float(write_core(path, memory, [vcpu]) * 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            control.socket.settimeout(0.1)
            try:
                control.on_ready(0)
            except (TimeoutError, OSError):
                pass
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        name = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"guest-\xff.core"))
        request_dump(control.path, name)
        assert b"guest-\xff.core" in os.listdir(os.fsencode(str(tmp_path)))
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        from pyvmm.dump import DumpError
        with pytest.raises(DumpError, match="a dump replaces only a regular file"):
            request_dump(control.path, str(fifo))
        assert os.path.exists(fifo) and not os.path.isfile(fifo)
    finally:
        stop.set()
        thread.join()
        control.close()


def test_snapshot_requests_reach_the_handler_with_stop_or_not(tmp_path) -> None:
    asked: list[tuple[str, bool]] = []

    def snapshot(path: str, stop: bool) -> str:
        asked.append((path, stop))
        return "0.005 67108864 73728"
    control = ControlServer(str(tmp_path / "vmm.sock"), lambda path: 0.0, snapshot)
    try:
        assert ask(control, b"snapshot /tmp/snap\n") == b"ok 0.005 67108864 73728\n"
        assert ask(control, b"snapshot-stop /tmp/b\n").startswith(b"ok ")
        assert ask(control, b"snapshot relative\n").startswith(b"error the snapshot path")
    finally:
        control.close()
    assert asked == [("/tmp/snap", False), ("/tmp/b", True)]


def test_a_vmm_without_snapshots_says_so(server) -> None:
    control, _ = server
    assert ask(control, b"snapshot /tmp/snap\n") == b"error this VMM takes no snapshots\n"


def test_request_snapshot_reports_the_vmms_refusal(tmp_path) -> None:
    from pyvmm.snapshot import SnapshotError
    from pyvmm.vmm.control import request_snapshot

    def refuse(path: str, stop: bool) -> str:
        raise SnapshotError("a machine with --drive can't be snapshotted yet")
    control = ControlServer(str(tmp_path / "vmm.sock"), lambda path: 0.0, refuse)
    try:
        thread = threading.Thread(target=control.on_ready, args=(0,))
        thread.start()
        with pytest.raises(SnapshotError, match="could not take the snapshot: a machine with"):
            request_snapshot(control.path, str(tmp_path / "snap"), timeout=5)
        thread.join(5)
    finally:
        control.close()
