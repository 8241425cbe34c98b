"""What a program finds around it: run in a command-mode guest, and on a host to compare.

    python3 tests/linux/guest_probe.py

Prints one ``PROBE item = value`` line per item (the environment, then a short
real workload), and between them what the workload itself writes: a
kselftest-style runner's diagnostics, through ``/dev/stdout`` opened anew.
A value is ``MISSING`` (or ``FAILED ...``) where a normal Linux has the thing
and this one lacks it, ``no KIND in the kernel`` where the kernel has none.
Exit status 0 always: test_command_mode.py judges the values.  Give it a pipe
or a terminal as stdout, not a file: ``echo x >/dev/stdout`` truncates a file.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import pty
import select
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Callable

#: (item, filesystem type, where a normal Linux mounts it).
KERNEL_FILESYSTEMS = (
    ("/dev/pts", "devpts", "/dev/pts"),
    ("/dev/shm", "tmpfs", "/dev/shm"),
    ("cgroup2", "cgroup2", "/sys/fs/cgroup"),
    ("debugfs", "debugfs", "/sys/kernel/debug"),
    ("tracefs", "tracefs", "/sys/kernel/tracing"),
    ("securityfs", "securityfs", "/sys/kernel/security"),
    ("bpffs", "bpf", "/sys/fs/bpf"),
)
#: A kselftest-style runner: each test's output goes, prefixed "# ", to fd 4, which
#: is /dev/stdout opened again in append mode (tools/testing/selftests/kselftest/runner.sh).
RUNNER = r"""
logfile=/dev/stdout
n=0
for test in alpha beta; do
    n=$((n + 1))
    ((((sh -c "echo diagnostic from $test; echo more from $test >&2" 2>&1; echo $? >&3) |
        sed 's/^/# /' >&4) 3>&1) | (read status; exit "$status")) 4>>"$logfile" 3>&1
    echo "ok $n selftests: probe: $test" >>"$logfile"
done
"""


def filesystems() -> set[str]:
    with open("/proc/filesystems") as stream:
        return {line.split()[-1] for line in stream if line.strip()}


def mounts() -> dict[str, str]:
    """mount point -> filesystem type (the last mount there)."""
    found = {}
    with open("/proc/self/mountinfo") as stream:
        for line in stream:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            found[point] = fields[fields.index("-") + 1]
    return found


def mounted(fstype: str, point: str, kernel: set[str], table: dict[str, str]) -> str:
    if fstype not in kernel:
        return f"no {fstype} in the kernel"
    if table.get(point) != fstype:
        return "MISSING"
    mode = os.stat(point).st_mode & 0o7777
    return f"{fstype}, mode {mode:o}" if point in ("/dev/shm", "/tmp") else fstype


def links() -> str:
    names = ("/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr")
    targets = [os.readlink(name) if os.path.islink(name) else "MISSING" for name in names]
    return " ".join(f"{name.removeprefix('/dev/')}->{target}"
                    for name, target in zip(names, targets))


def reopen_streams() -> str:
    """Open our stdout, stderr and stdin again by name, as a shell script does."""
    sys.stdout.flush()
    sys.stderr.flush()
    wrote = subprocess.run(["sh", "-c", "echo probe reopened stdout >/dev/stdout && "
                            "exec 3>/dev/stderr && echo probe reopened stderr >&3"])
    read = subprocess.run(["sh", "-c", "exec cat /dev/stdin"], stdout=subprocess.PIPE)
    return (f"write status {wrote.returncode}, read status {read.returncode}: "
            f"{read.stdout.decode(errors='replace').strip()!r}")


def pty_round_trip() -> str:
    if "devpts" not in filesystems():
        return "no devpts in the kernel"
    try:
        pid, master = pty.fork()
    except OSError as exc:
        return f"FAILED {exc}"
    if pid == 0:
        os.execvp("sh", ["sh", "-c", "read line; echo \"got $line on $(tty)\""])
    os.write(master, b"ping\n")
    output = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child's side closed
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    line = output.decode(errors="replace").replace("\r", "").splitlines()[-1:]
    return f"status {os.waitstatus_to_exitcode(status)}: {line[0] if line else ''}"


def _square(value: int) -> int:
    with _lock:
        return value * value


def _with_lock(lock: multiprocessing.synchronize.Lock) -> None:
    global _lock
    _lock = lock


_lock: multiprocessing.synchronize.Lock


def pool_with_lock() -> str:
    try:
        lock = multiprocessing.Lock()
        with multiprocessing.Pool(2, initializer=_with_lock, initargs=(lock,)) as pool:
            return f"sum of squares {sum(pool.map(_square, range(100)))}"
    except OSError as exc:
        return f"FAILED {exc}"


def tcp_echo() -> str:
    if not os.path.exists("/proc/net"):
        return "no network in the kernel"
    payload = os.urandom(1 << 16)
    try:
        server = socket.create_server(("127.0.0.1", 0))
    except OSError as exc:
        return f"FAILED {exc}"

    def echo() -> None:
        connection, _ = server.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        with socket.create_connection(server.getsockname(), timeout=30) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            back = b""
            while data := client.recv(65536):
                back += data
    except OSError as exc:
        return f"FAILED {exc}"
    finally:
        server.close()
    return f"{len(back)} bytes back, {'equal' if back == payload else 'DIFFERENT'}"


def loopback() -> str:
    try:
        with open("/sys/class/net/lo/flags") as stream:
            flags = int(stream.read(), 16)
    except FileNotFoundError:
        return "no network in the kernel"
    return "up" if flags & 1 else "MISSING (down)"


def tmp_writable() -> str:
    try:
        with tempfile.NamedTemporaryFile(dir="/tmp") as stream:
            stream.write(b"x")
    except OSError as exc:
        return f"FAILED {exc}"
    return "writable"


def cpuinfo(key: str) -> str:
    with open("/proc/cpuinfo") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return "none"


def caches() -> str:
    base = "/sys/devices/system/cpu/cpu0/cache"
    found = []
    indexes = sorted(n for n in os.listdir(base) if n.startswith("index")) \
        if os.path.isdir(base) else []
    for index in indexes:
        def read(name: str, index: str = index) -> str:
            with open(f"{base}/{index}/{name}") as stream:
                return stream.read().strip()
        kind = {"Data": "d", "Instruction": "i"}.get(read("type"), "")
        found.append(f"L{read('level')}{kind} {read('size')}")
    return ", ".join(found) or "none"


def runner() -> str:
    sys.stdout.flush()
    return f"status {subprocess.run(['sh', '-c', RUNNER]).returncode}"


def identity() -> str:
    groups = ",".join(str(g) for g in sorted(set(os.getgroups()) - {os.getgid()}))
    return f"{os.getuid()}:{os.getgid()} groups {groups or 'none'}"


def main() -> None:
    kernel, table = filesystems(), mounts()
    items: list[tuple[str, Callable[[], str]]] = [
        *[(name, lambda f=fstype, p=point: mounted(f, p, kernel, table))
          for name, fstype, point in KERNEL_FILESYSTEMS],
        ("/dev/ptmx", lambda: "present" if os.path.exists("/dev/ptmx") else "MISSING"),
        ("/dev/fd and /dev/std*", links),
        ("streams re-opened by name", reopen_streams),
        ("loopback", loopback),
        ("hostname", socket.gethostname),
        ("/tmp", tmp_writable),
        ("uid:gid, groups", identity),
        ("model name", lambda: cpuinfo("model name")),
        ("cache size", lambda: cpuinfo("cache size")),
        ("TLB size", lambda: cpuinfo("TLB size")),
        ("caches (sysfs)", caches),
        ("pty round trip", pty_round_trip),
        ("multiprocessing pool with a lock", pool_with_lock),
        ("TCP echo over 127.0.0.1", tcp_echo),
        ("kselftest-style runner", runner),
    ]
    for name, probe in items:
        try:
            value = probe()
        except Exception as exc:  # one item's failure is its value, not the probe's end
            value = f"FAILED {type(exc).__name__}: {exc}"
        print(f"PROBE {name} = {value}", flush=True)


if __name__ == "__main__":
    main()
