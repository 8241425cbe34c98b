"""``pyvmm run -k KERNEL -- CMD``: a command in a real Linux guest on the host's files.

Needs hardware KVM (run inside the rig).  Each test boots a guest per kernel
(the ``kernel`` fixture, conftest.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyvmm.kvm.system import is_pvm_host

from .conftest import KERNELS
from .guests import retried_in_rig

REPO = Path(__file__).resolve().parents[2]
#: Seconds a guest may take (software-emulated SVM in the rig is slow).
GUEST_TIMEOUT = 600

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/kvm") or is_pvm_host(),
    reason="needs hardware KVM (kvm_pvm runs no Linux user space): run in the rig")


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: bytes


def command(kernel: str, *args: str, stdin: bytes = b"", cwd: Path = REPO,
            options: tuple[str, ...] = ()) -> Result:
    def once() -> Result:
        proc = subprocess.run([sys.executable, "-m", "pyvmm", "run", "-k", kernel,
                               "-t", str(GUEST_TIMEOUT), *options, "--", *args],
                              input=stdin, capture_output=True, cwd=cwd,
                              env=dict(os.environ, PYTHONPATH=str(REPO)),
                              timeout=GUEST_TIMEOUT + 60)
        return Result(proc.returncode, proc.stdout, proc.stderr)
    return retried_in_rig(once, lambda result: result.stderr.decode(errors="replace"))


def test_true_is_0(kernel: str) -> None:
    result = command(kernel, "true")
    assert (result.status, result.stdout, result.stderr) == (0, b"", b"")


def test_the_commands_status_is_pyvmms(kernel: str) -> None:
    assert command(kernel, "sh", "-c", "exit 7").status == 7


def test_false_is_1(kernel: str) -> None:
    assert command(kernel, "false").status == 1


def test_a_command_that_is_not_there_is_127(kernel: str) -> None:
    result = command(kernel, "no-such-command-here")
    assert result.status == 127
    assert b"no-such-command-here" in result.stderr


def test_stdout_and_stderr_are_apart_and_byte_exact(kernel: str, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(10 << 20))
    result = command(kernel, "sh", "-c", f"cat {blob}; printf 'to\\r\\nstderr\\0' >&2",
                     cwd=tmp_path)
    assert result.status == 0
    assert result.stdout == blob.read_bytes()
    assert result.stderr == b"to\r\nstderr\0"


def test_stdin_is_piped_in_and_ends(kernel: str) -> None:
    data = b"hi\n" + bytes(range(256)) * 1000
    result = command(kernel, "sh", "-c", "cat; echo done", stdin=data)
    assert (result.status, result.stdout) == (0, data + b"done\n")


def test_cwd_uid_and_environment_carry_over(kernel: str, tmp_path: Path) -> None:
    result = command(kernel, "sh", "-c", 'pwd; id -u; id -g; echo "$HOME"', cwd=tmp_path)
    assert result.status == 0, result.stderr
    assert result.stdout.decode().split("\n")[:4] == [
        str(tmp_path), str(os.geteuid()), str(os.getegid()), os.environ.get("HOME", "")]


def test_the_hosts_own_programs_run(kernel: str) -> None:
    # Not the busybox that /init runs on: the host's readlink and sh, found on its PATH.
    result = command(kernel, "sh", "-c", 'readlink /proc/self/exe; readlink /proc/$$/exe')
    assert result.status == 0, result.stderr
    assert result.stdout.decode().split() == [
        os.path.realpath(p) for p in (shutil_which("readlink"), shutil_which("sh"))]


def shutil_which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    assert found
    return found


def test_another_user_with_user(kernel: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    result = command(kernel, "sh", "-c", "id -u; id -g; touch /root/x", cwd=tmp_path,
                     options=("--user", "65534:65534"))
    assert result.stdout == b"65534\n65534\n"
    assert result.status == 1 and b"Permission denied" in result.stderr


def test_writes_stay_in_the_guest_unless_rw(kernel: str, tmp_path: Path) -> None:
    target = tmp_path / "written"
    result = command(kernel, "sh", "-c", f"echo guest > {target} && cat {target}")
    assert (result.status, result.stdout) == (0, b"guest\n")
    assert not target.exists()
    result = command(kernel, "sh", "-c", f"echo guest > {target}", options=("--rw",))
    assert result.status == 0, result.stderr
    assert target.read_bytes() == b"guest\n"


def test_a_second_share_and_read_only(kernel: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_bytes(b"from the host\n")
    result = command(kernel, "sh", "-c", f"cat {shared}/file; echo x > {shared}/new",
                     options=("--rw", "--share", f"{shared},ro"))
    assert result.stdout == b"from the host\n"
    assert result.status != 0
    assert b"Read-only file system" in result.stderr
    assert not (shared / "new").exists()


def test_a_guest_panic_mid_command_is_255_with_the_reason(kernel: str) -> None:
    result = command(kernel, "sh", "-c", "echo before; echo c > /proc/sysrq-trigger; sleep 60")
    assert result.status == 255
    assert result.stdout == b"before\n"
    assert result.stderr.count(b"\n") == 1
    assert b"panic" in result.stderr.lower()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, name) of every process below ``pid``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(parent, []).append((int(entry), name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def test_a_virtiofsd_that_dies_is_a_clean_stop_with_the_reason(kernel: str) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", kernel,
                             "-t", str(GUEST_TIMEOUT), "--", "sh", "-c",
                             "echo ready; while :; do ls / >/dev/null; done"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        daemons = [pid for pid, name in _descendants(proc.pid) if name == "virtiofsd"]
        assert daemons
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - started < 30
    assert proc.returncode == 255
    assert stderr.count(b"\n") == 1
    assert b"virtiofsd for / was killed by signal 9" in stderr


PROBE = REPO / "tests" / "linux" / "guest_probe.py"
#: The filesystems a normal Linux mounts, as the probe names them, and their types.
KERNEL_FILESYSTEMS = {"/dev/pts": "devpts", "cgroup2": "cgroup2", "debugfs": "debugfs",
                      "tracefs": "tracefs", "securityfs": "securityfs", "bpffs": "bpf"}


def probe_values(output: bytes) -> dict[str, str]:
    values = {}
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("PROBE "):
            name, _, value = line.removeprefix("PROBE ").partition(" = ")
            values[name] = value
    return values


def test_the_guest_looks_like_a_normal_linux(kernel: str) -> None:
    """tests/linux/guest_probe.py in the guest: the environment, then a short real workload."""
    from .guest_probe import caches, cpuinfo

    result = command(kernel, sys.executable, str(PROBE), stdin=b"stdin-by-name\n")
    assert result.status == 0, result.stderr
    values = probe_values(result.stdout)
    assert len(values) == 22, result.stdout
    assert not [v for v in values.values() if "MISSING" in v or "FAILED" in v], values
    debian = kernel != str(KERNELS["minimal"])  # Debian's has every filesystem and the network
    for name, fstype in KERNEL_FILESYSTEMS.items():
        allowed = {fstype} if debian else {fstype, f"no {fstype} in the kernel"}
        assert values[name] in allowed, (name, values[name])
    assert values["/dev/shm"] == "tmpfs, mode 1777"
    assert values["/dev/fd and /dev/std*"] == ("fd->/proc/self/fd stdin->/proc/self/fd/0 "
                                               "stdout->/proc/self/fd/1 stderr->/proc/self/fd/2")
    # Opened again by name, CMD's streams are still pyvmm's own, apart.
    assert values["streams re-opened by name"] == \
        "write status 0, read status 0: 'stdin-by-name'"
    assert b"probe reopened stdout\n" in result.stdout
    assert b"probe reopened stderr\n" in result.stderr
    assert values["hostname"] == socket.gethostname()
    assert values["/tmp"] == "writable"
    groups = ",".join(str(g) for g in sorted(set(os.getgroups()) - {os.getgid()}))
    assert values["uid:gid, groups"] == f"{os.getuid()}:{os.getgid()} groups {groups or 'none'}"
    # The host's CPU as the guest's CPUID shows it (brand string, cache and TLB leaves).
    assert values["model name"] == cpuinfo("model name")
    assert (values["cache size"], values["TLB size"]) == (cpuinfo("cache size"),
                                                          cpuinfo("TLB size"))
    assert values["caches (sysfs)"] == caches()
    # The workload.
    assert values["pty round trip"].startswith("status 0: got ping on /dev/pts/")
    assert values["multiprocessing pool with a lock"] == "sum of squares 328350"
    network = values["loopback"] != "no network in the kernel"
    assert network or not debian
    assert values["loopback"] == "up" or not network
    assert values["TCP echo over 127.0.0.1"] == (
        "65536 bytes back, equal" if network else "no network in the kernel")
    assert values["kselftest-style runner"] == "status 0"
    for test, number in (("alpha", 1), ("beta", 2)):
        for line in (f"# diagnostic from {test}", f"# more from {test}",
                     f"ok {number} selftests: probe: {test}"):
            assert line.encode() + b"\n" in result.stdout, line


def test_what_the_command_leaves_running_is_stopped_after_its_output(kernel: str) -> None:
    # A daemon holding stdout would keep the relay from its end: it is stopped, as
    # poweroff would, and everything written before the command ended arrives first.
    result = command(kernel, "sh", "-c",
                     "(sleep 1000; echo late) & for i in 1 2 3; do echo line $i; done; "
                     "echo to stderr >&2; exit 3")
    assert (result.status, result.stdout, result.stderr) == (
        3, b"line 1\nline 2\nline 3\n", b"to stderr\n")
