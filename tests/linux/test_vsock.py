"""vsock under Debian's stock kernel in command mode: guest→host and host→guest
connections through the kernel's vhost-vsock, ``pyvmm exec`` reaching a running
``pyvmm run --control SOCKET -- CMD``, and ``Machine.command`` / ``vm.run``, each
giving stdout, stderr and the status apart.

Needs hardware KVM (the rig) and /dev/vhost-vsock (in the rig this module loads
``vhost_vsock``, as modules don't load on demand there).  The guest's side of its
connections is python3's ``socket.AF_VSOCK`` (the host's python3, which command
mode's guest sees); its vsock drivers are the host's modules, loaded by /init.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyvmm
from tests.host_kernels import debian_kernel

from .test_command_mode import GUEST_TIMEOUT, REPO

if os.environ.get("RIG") == "1" and os.geteuid() == 0:
    subprocess.run(["modprobe", "vhost_vsock"], capture_output=True)

pytestmark = pytest.mark.skipif(not os.access("/dev/vhost-vsock", os.R_OK | os.W_OK),
                                reason="no usable /dev/vhost-vsock (modprobe vhost_vsock)")

#: Host ports the guest connects to, and the guest port the host connects to.
HOST_PORT, GUEST_PORT = 9001, 9002
#: The main command: say hello to the host (CID 2), then answer one connection from it.
GUEST_SCRIPT = f"""
import socket
c = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
c.connect((2, {HOST_PORT}))
c.sendall(b"hello from the guest")
c.close()
listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
listener.bind((socket.VMADDR_CID_ANY, {GUEST_PORT}))
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
conn.sendall(conn.recv(100).upper())
conn.close()
print("main done")
"""


@pytest.fixture
def kernel() -> str:
    path = debian_kernel()
    if path is None:
        pytest.skip("no Debian kernel in /boot")
    return str(path)


def _pyvmm(*args: str, stdin: bytes = b"", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_vsock_both_ways_and_pyvmm_exec(kernel: str, tmp_path: Path) -> None:
    control = str(tmp_path / "vm.sock")
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, HOST_PORT))
    listener.listen(1)
    listener.settimeout(GUEST_TIMEOUT)
    run = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", kernel,
                            "-t", str(GUEST_TIMEOUT), "--control", control, "--",
                            "python3", "-I", "-S", "-c", GUEST_SCRIPT],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        # guest -> host: the main command connects to CID 2.
        conn, (peer_cid, _) = listener.accept()
        with conn:
            assert conn.recv(100) == b"hello from the guest"
        from pyvmm.vmm.control import request_vsock
        cid = request_vsock(control)
        assert peer_cid == cid >= 3

        # pyvmm exec: stdout, stderr and the status apart; stdin passed in.
        result = _pyvmm("exec", control, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
        result = _pyvmm("exec", control, "--", "tr", "a-z", "A-Z", stdin=b"abc\n")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"ABC\n", b"")
        result = _pyvmm("exec", control, "--", "sh", "-c", "pwd; id -u")
        assert result.stdout == f"{REPO}\n{os.geteuid()}\n".encode(), result.stderr
        started = time.monotonic()
        assert _pyvmm("exec", control, "--", "true").returncode == 0
        print(f"pyvmm exec -- true: {time.monotonic() - started:.2f} s")
        result = _pyvmm("exec", control, "--", "no-such-program-here")
        assert result.returncode == 127 and b"no-such-program-here" in result.stderr

        # A second VM can't have this CID: one line, exit 2, before any guest starts.
        result = _pyvmm("run", "-k", kernel, "--vsock", str(cid), timeout=60)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "in use" in lines[0], lines

        # host -> guest: the main command answers on its port, then ends the run.
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as client:
                    client.settimeout(30)
                    client.connect((cid, GUEST_PORT))
                    client.sendall(b"ping")
                    assert client.recv(100) == b"PING"
                break
            except (ConnectionResetError, ConnectionRefusedError):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr.decode(errors="replace")
        assert stdout == b"listening\nmain done\n"
    finally:
        listener.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert not os.path.exists(control)  # the control socket goes with pyvmm
    # The guest is gone: exec says so in one line.
    result = _pyvmm("exec", control, "--", "true")
    assert result.returncode == 2 and len(result.stderr.decode().splitlines()) == 1


#: The guest asks its vsock driver for its own CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID).
LOCAL_CID = ("import fcntl, struct\n"
             "with open('/dev/vsock', 'rb') as dev:\n"
             "    print(struct.unpack('I', fcntl.ioctl(dev, 0x7b9, bytes(4)))[0])\n")


def test_vm_run_gives_stdout_stderr_and_status(kernel: str) -> None:
    from pyvmm.vhost.vsock import VhostVsock

    cid = 100_000 + os.getpid() % 10_000
    with pyvmm.Machine.command(kernel=kernel, timeout=GUEST_TIMEOUT, vsock=cid) as vm:
        result = vm.run(["sh", "-c", "echo out; echo err >&2; exit 5"], wait=GUEST_TIMEOUT)
        assert (result.returncode, result.stdout, result.stderr) == (5, b"out\n", b"err\n")
        # The device's config space told the guest's driver the CID we gave.
        assert vm.run(["python3", "-c", LOCAL_CID]).stdout == f"{cid}\n".encode()
        started = time.monotonic()
        for _ in range(5):
            assert vm.run(["true"]).returncode == 0
        print(f"vm.run(['true']): {(time.monotonic() - started) / 5 * 1000:.0f} ms each")
        result = vm.run("cat; echo done >&2", input=b"\x00binary\xff")
        assert (result.returncode, result.stdout, result.stderr) == \
            (0, b"\x00binary\xff", b"done\n")
        with pytest.raises(subprocess.TimeoutExpired):
            vm.run(["sleep", "60"], timeout=2)
        assert vm.run(["true"]).returncode == 0  # the agent still serves
        assert vm.running
    assert not vm.running
    VhostVsock(cid).close()  # the CID was given back when the machine stopped
