"""``pyvmm exec``'s wire format (pyvmm/command/initramfs/agent.py) with the real agent on
a socketpair standing in for vsock (this host has no /dev/vhost-vsock), and fake peers
that break it; ``pyvmm exec`` and the control socket's ``vsock`` request."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyvmm.cli.main import main
from pyvmm.command.exec import ExecError, ExecTimeout, exec_in_guest, run_over
from pyvmm.command.initramfs import agent
from pyvmm.vmm.control import ControlServer, RequestError, request_vsock


def run_with_agent(argv, stdin=(), prefix=()) -> tuple[int, bytes, bytes]:
    """``argv`` through the real agent (run on this host) at the other end of a socketpair."""
    host, guest = socket.socketpair()
    server = threading.Thread(target=agent.serve_connection,
                              args=(guest, [os.fsencode(p) for p in prefix]))
    server.start()
    stdout, stderr = bytearray(), bytearray()
    try:
        status = run_over(host, argv, list(stdin), stdout.extend, stderr.extend)
    finally:
        host.close()
        server.join(10)
    assert not server.is_alive()
    return status, bytes(stdout), bytes(stderr)


def test_stdout_stderr_and_status_come_back_apart() -> None:
    assert run_with_agent(["sh", "-c", "echo out; echo err >&2; exit 3"]) == \
        (3, b"out\n", b"err\n")


def test_stdin_is_passed_and_ended_binary_safe() -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one message's payload
    status, stdout, _ = run_with_agent(["cat"], stdin=[data[:7], data[7:]])
    assert (status, stdout) == (0, data)
    assert run_with_agent(["wc", "-c"], stdin=[]) == (0, b"0\n", b"")


def test_a_signal_is_128_plus_its_number() -> None:
    assert run_with_agent(["sh", "-c", "kill -9 $$"])[0] == 137


def test_the_prefix_runs_the_command() -> None:
    status, stdout, _ = run_with_agent(["x"], prefix=["sh", "-c", 'echo "$0 $1"', "p"])
    assert (status, stdout) == (0, b"p x\n")


def test_a_program_that_cannot_run_is_an_error_line() -> None:
    with pytest.raises(ExecError, match="cannot run /no/such/program"):
        run_with_agent(["/no/such/program"])


def test_bad_commands_are_refused_before_sending() -> None:
    for argv, why in (([], "no command"), (["a\0b"], "NUL"), (["x" * (1 << 20)], "longer")):
        with pytest.raises(ExecError, match=why):
            run_with_agent(argv)


def test_the_agent_refuses_a_request_that_is_not_a_command() -> None:
    host, guest = socket.socketpair()
    server = threading.Thread(target=agent.serve_connection, args=(guest, []))
    server.start()
    with host:
        host.sendall(agent.message(agent.STDIN, b"hello"))
        received = agent.read_message(host.makefile("rb"))
    server.join(10)
    assert received is not None and received[0] == agent.ERROR
    assert b"first message must be the command" in received[1]
    for payload in (b"", b"no terminator"):
        with pytest.raises(agent.AgentProtocolError):
            agent.decode_argv(payload)


def test_the_host_going_away_kills_the_command(tmp_path: Path) -> None:
    """The command runs in a session of its own (setsid, as the guest's prefix does)."""
    pid_file = tmp_path / "pid"
    host, guest = socket.socketpair()
    server = threading.Thread(target=agent.serve_connection, args=(guest, [b"setsid"]))
    server.start()
    host.sendall(agent.message(agent.ARGV, agent.encode_argv(
        ["sh", "-c", f"echo $$ >{pid_file}; exec sleep 100"])))
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    host.close()
    server.join(10)
    assert not server.is_alive()
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def fake_agent(replies: bytes) -> socket.socket:
    """The host's end of a connection whose guest reads the request and sends ``replies``."""
    host, guest = socket.socketpair()

    def answer() -> None:
        with guest:
            guest.recv(1 << 16)
            guest.sendall(replies)
            guest.shutdown(socket.SHUT_WR)
            # Read what else comes (stdin's end) until the host closes: closing with it
            # unread would reset the connection, which is another test's case.
            while guest.recv(1 << 16):
                pass
    threading.Thread(target=answer, daemon=True).start()
    return host


@pytest.mark.parametrize("replies, why", [
    (b"", "went away before the command ended"),
    (agent.message(agent.STDOUT, b"half"), "went away before the command ended"),
    (struct.pack(">cI", b"1", 1 << 30), "broke off"),
    (struct.pack(">cI", b"1", 10) + b"short", "broke off"),
    (agent.message(b"z", b"?"), "doesn't know"),
    (agent.message(agent.EXIT, b"\0"), "doesn't know"),
    (agent.message(agent.ERROR, b"no such user\n"), "no such user"),
])
def test_a_broken_answer_is_one_error(replies: bytes, why: str) -> None:
    with fake_agent(replies) as sock:
        with pytest.raises(ExecError, match=why) as caught:
            run_over(sock, ["true"], [], lambda b: None, lambda b: None)
    assert "\n" not in str(caught.value) and caught.value.exit_status == 255


def test_no_vsock_here_is_one_error() -> None:
    with pytest.raises(ExecError, match="no agent answers at vsock 3"):
        exec_in_guest(3, ["true"], [], lambda b: None, lambda b: None, wait=0)
    assert issubclass(ExecTimeout, ExecError)


def serve_control(tmp_path: Path, cid: int | None):
    path = str(tmp_path / "c.sock")
    server = ControlServer(path, lambda p: 0.0, None, cid)
    thread = threading.Thread(target=server.on_ready, args=(0,))
    thread.start()
    return server, thread, path


def test_the_control_socket_names_the_guests_cid(tmp_path: Path) -> None:
    server, thread, path = serve_control(tmp_path, 1234)
    try:
        assert request_vsock(path) == 1234
    finally:
        thread.join(5)
        server.close()
    server, thread, path = serve_control(tmp_path, None)
    try:
        with pytest.raises(RequestError, match="no vsock"):
            request_vsock(path)
    finally:
        thread.join(5)
        server.close()
    assert not os.path.exists(path)


def test_pyvmm_exec_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["exec", str(tmp_path / "none.sock"), "--", "true"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "no running pyvmm answers" in result.output
    server, thread, path = serve_control(tmp_path, None)
    try:
        result = runner.invoke(main, ["exec", path, "--", "true"])
    finally:
        thread.join(5)
        server.close()
    assert result.exit_code == 2 and "this machine has no vsock" in result.output
    assert result.output.count("\n") == 1
    result = runner.invoke(main, ["exec", path])
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_output_to_a_closed_pipe_is_dropped_quietly() -> None:
    from pyvmm.command.exec import fd_writer

    read_end, write_end = os.pipe()
    os.close(read_end)
    write = fd_writer(write_end)
    write(b"lost")  # EPIPE (Python ignores SIGPIPE): no exception, nothing more tried
    write(b"lost too")
    os.close(write_end)


def test_an_agent_that_resets_the_connection_went_away() -> None:
    """Closing with our stdin unread resets the connection (ECONNRESET, not end of
    stream): still the one line of an agent gone before the command ended."""
    host, guest = socket.socketpair()
    with host:
        def answer() -> None:
            guest.recv(1)  # leaves the rest of the request unread
            guest.close()
        threading.Thread(target=answer, daemon=True).start()
        with pytest.raises(ExecError, match="went away before the command ended"):
            run_over(host, ["true"], [b"x" * 4096], lambda b: None, lambda b: None)
