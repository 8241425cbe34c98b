"""``--net user`` in command mode under Debian's kernel: the guest fetches a file from
an HTTP server on the host's loopback through passt's gateway address, and its hash
matches.

Needs hardware KVM (the rig), passt, and a host interface passt can call routable
(an address and a default route: in the rig, ``modprobe dummy`` and a dummy0 with
both: this test makes them when it runs in the rig, a throwaway machine).  CMD
does nothing to the network: command mode's /init loads virtio_net and
configures eth0 (pyvmm/command/initramfs/network.sh) before it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pyvmm.vcpu.stats import read_json_stats
from tests.host_kernels import debian_kernel

from .test_command_mode import REPO, command


def _default_route() -> bool:
    with open("/proc/net/route") as routes:
        return any(line.split()[1] == "00000000" for line in routes.readlines()[1:])


def _give_the_rig_a_network() -> None:
    """In the rig (no network of its own): lo up, and a dummy interface with an address
    and a default route, as passt needs.  Anywhere else the host's network is left alone."""
    if os.environ.get("RIG") != "1" or os.geteuid() != 0 or _default_route():
        return
    for command in (["modprobe", "dummy"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "dummy0", "type", "dummy"],
                    ["ip", "addr", "add", "10.0.2.2/24", "dev", "dummy0"],
                    ["ip", "link", "set", "dummy0", "up"],
                    ["ip", "route", "add", "default", "via", "10.0.2.1"]):
        subprocess.run(command, check=True, capture_output=True)


_give_the_rig_a_network()


pytestmark = [
    pytest.mark.skipif(shutil.which("passt") is None, reason="passt not installed"),
    pytest.mark.skipif(not _default_route(), reason="passt needs a routable interface "
                       "(an address and a default route), and this host has none"),
]


@pytest.fixture
def kernel() -> str:
    path = debian_kernel()
    if path is None:
        pytest.skip("no Debian kernel in /boot")
    return str(path)


@contextlib.contextmanager
def serving_random_file(directory: Path, address: str) -> Iterator[tuple[int, str]]:
    """A file of random bytes served over HTTP on ``address`` (once it answers):
    (port, its sha256)."""
    blob = os.urandom(3 << 20)
    (directory / "blob").write_bytes(blob)
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", address,
                               str(port)], cwd=directory, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((address, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, hashlib.sha256(blob).hexdigest()
    finally:
        server.terminate()
        server.wait()


@pytest.fixture
def http_server(tmp_path: Path):
    """A file of random bytes served on 127.0.0.1: (port, its sha256)."""
    with serving_random_file(tmp_path, "127.0.0.1") as served:
        yield served


def test_the_guest_fetches_a_file_from_the_hosts_loopback(kernel: str, http_server) -> None:
    """And the NIC's interrupt registers never reach Python (--stats): its InterruptStatus
    reads are answered by the vCPU's C loop, its ACKs absorbed by KVM (the guest names
    its window: /proc/iomem's line for eth0's platform device)."""
    port, digest = http_server
    bb = "/run/pyvmm/busybox"
    script = (f"gateway=$({bb} ip route | {bb} awk "
              "'/^default/ {print $3; exit}')\n"
              f"{bb} ip -o addr show; echo gateway $gateway\n"
              "echo mtu $(cat /sys/class/net/eth0/mtu)\n"
              f"{bb} wget -q -O - http://$gateway:{port}/blob "
              f"| {bb} sha256sum\n"
              f"nic=$({bb} readlink -f /sys/class/net/eth0/device/..)\n"
              f"echo nic-window $({bb} grep -F \" : ${{nic##*/}}\" /proc/iomem "
              f"| {bb} head -n 1)\n")
    result = command(kernel, "sh", "-c", script, options=("--net", "user", "--stats=json"))
    out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert result.status == 0, (out, err)
    assert f"{digest}  -" in out, out
    assert "mtu 65520" in out  # passt's, through the device's config space and DHCP
    assert "eth0" in out and "inet " in out
    window = next(line.split()[1] for line in out.splitlines()
                  if line.startswith("nic-window "))
    base = int(window.split("-")[0], 16)
    stats = read_json_stats(err)
    assert stats is not None, err
    kinds = {(row["kind"], row["address"]): row["count"] for row in stats["by_address"]}
    status, ack = base + 0x60, base + 0x64
    assert kinds.get(("mmio-read-c", status), 0) > 0, (window, kinds)
    assert kinds.get(("mmio-write-kvm", ack), 0) > 0, (window, kinds)
    assert ("mmio-read", status) not in kinds and ("mmio-write", ack) not in kinds, kinds


def _first_line(proc: subprocess.Popen, seconds: float = 300) -> bytes:
    """The first line ``proc`` writes to stdout, or what it wrote by then (never blocks
    longer than ``seconds``: a guest that never speaks must not hang the test)."""
    import select

    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + seconds
    while b"\n" not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_in_the_guest_is_reached_through_hostfwd(kernel: str) -> None:
    """The client speaks first, as HTTP's does: bookworm's passt completes an inward
    handshake only with the client's first data (it never ACKs the guest's SYN-ACK on its
    own: a guest server that speaks first, like sshd's banner, waits until the client has
    sent something; seen in passt's pcap in the rig and with passt alone on a socketpair)."""
    port = _free_port()
    server = ("import socket; s = socket.socket(); "
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', 8080)); "
              "s.listen(); print('listening', flush=True); c, _ = s.accept(); "
              "c.sendall(b'hello from the guest, you said ' + c.recv(100)); c.close()")
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", kernel, "-t", "600",
                             "--net", f"user,hostfwd=tcp:127.0.0.1:{port}-:8080", "--",
                             sys.executable, "-c", server], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        line = _first_line(proc)
        assert line == b"listening\n", (line, proc.poll())
        with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
            client.sendall(b"hi")
            answer = b""
            while chunk := client.recv(100):
                answer += chunk
        assert answer == b"hello from the guest, you said hi"
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


NAME, ADDRESS = "pyvmm-test.internal", "10.9.8.7"


def _dns_answer(query: bytes) -> bytes:
    """A reply to one DNS query: NAME's A record for an A question, no record otherwise."""
    end = 12
    while query[end]:
        end += 1 + query[end]
    qtype = int.from_bytes(query[end + 1:end + 3], "big")
    question = query[12:end + 5]
    labels, offset = [], 12
    while query[offset]:
        labels.append(query[offset + 1:offset + 1 + query[offset]].decode())
        offset += 1 + query[offset]
    found = ".".join(labels).lower() == NAME and qtype == 1
    header = query[:2] + b"\x81\x80" + b"\x00\x01" + (b"\x00\x01" if found else b"\x00\x00") \
        + b"\x00\x00\x00\x00"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ADDRESS)
    return header + question + (answer if found else b"")


@pytest.fixture
def dns_on_loopback():
    """The rig's resolver made 127.0.0.1:53, where this serves NAME: passt hands the guest
    its gateway as DNS server and forwards the queries to the host's loopback."""
    if os.environ.get("RIG") != "1" or os.geteuid() != 0:
        pytest.skip("rewrites /etc/resolv.conf: only in the rig, a throwaway machine")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 53))
    server.settimeout(0.2)
    if os.path.lexists("/etc/resolv.conf"):
        os.unlink("/etc/resolv.conf")
    Path("/etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = server.recvfrom(4096)
                server.sendto(_dns_answer(query), peer)
            except (TimeoutError, socket.timeout):
                continue
            except (OSError, IndexError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()
    server.close()


def test_dns_resolves_a_name_through_passt(kernel: str, dns_on_loopback) -> None:
    result = command(kernel, "sh", "-c", f"cat /etc/resolv.conf; getent ahostsv4 {NAME}",
                     options=("--net", "user"))
    out = result.stdout.decode(errors="replace")
    assert result.status == 0, (out, result.stderr.decode(errors="replace"))
    assert f"{ADDRESS}       STREAM {NAME}" in out or f"{ADDRESS} " in out, out


FLOOD = r"""
import socket, sys, time
eth = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
eth.bind(("eth0", 0))
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
frames = [b"\xff" * 6 + mac + b"\x88\xb5" + bytes(size) for size in (46, 1500, 65000, 70000)]
gateway = [l.split()[2] for l in open("/proc/net/route").read().splitlines()[1:]
           if l.split()[1] == "00000000"]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setblocking(False)
print("flooding", flush=True)
while True:
    for frame in frames:
        try:
            eth.send(frame)
        except OSError:
            pass
    try:
        udp.sendto(bytes(60000), ("10.0.2.1", 9))
    except OSError:
        pass
"""


def _rss_anon_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_a_flooding_guest_leaves_pyvmm_bounded_and_the_timeout_answered(kernel: str) -> None:
    """The guest sends frames as fast as it can (oversize ones too) while the host floods
    it through hostfwd: pyvmm's own heap (RssAnon; guest RAM is a shared memfd) stops
    growing, and --timeout is answered within 100 ms (--stats: stop request to report)."""
    port = _free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", kernel, "-t", "60",
                             "--stats=json", "--net", f"user,hostfwd=udp:127.0.0.1:{port}-:9999",
                             "--", sys.executable, "-c", FLOOD], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    stop = threading.Event()

    def flood_inward() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            while not stop.is_set():
                try:
                    sender.sendto(bytes(1400), ("127.0.0.1", port))
                except OSError:
                    time.sleep(0.001)

    inward = threading.Thread(target=flood_inward, daemon=True)
    try:
        line = _first_line(proc)
        assert line == b"flooding\n", (line, proc.poll())
        inward.start()
        samples = []
        while proc.poll() is None:
            rss = _rss_anon_kib(proc.pid)
            if rss is not None:
                samples.append(rss)
            time.sleep(0.25)
        _, stderr = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = stderr.decode(errors="replace")
    assert proc.returncode == 255 and "timed out after 60 s" in text, text
    stats = json.loads(next(line for line in text.splitlines() if "pyvmm_stats" in line))
    stopping = stats["pyvmm_stats"]["stopping_s"]
    print(f"flood: {len(samples)} RssAnon samples, first {samples[0]} KiB, peak "
          f"{max(samples)} KiB, last {samples[-1]} KiB; timeout answered in "
          f"{stopping * 1000:.1f} ms")
    half = samples[len(samples) // 2:]
    assert max(half) - min(samples[:max(1, len(samples) // 4)]) < 16 << 10, samples
    assert stopping < 0.1, stopping
