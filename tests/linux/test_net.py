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

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.fixture
def http_server(tmp_path: Path):
    """A file of random bytes served on 127.0.0.1: (port, its sha256)."""
    blob = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(blob)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                               str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, hashlib.sha256(blob).hexdigest()
    finally:
        server.terminate()
        server.wait()


def test_the_guest_fetches_a_file_from_the_hosts_loopback(kernel: str, http_server) -> None:
    port, digest = http_server
    script = ("gateway=$(/run/pyvmm/busybox ip route | /run/pyvmm/busybox awk "
              "'/^default/ {print $3; exit}')\n"
              "/run/pyvmm/busybox ip -o addr show; echo gateway $gateway\n"
              "echo mtu $(cat /sys/class/net/eth0/mtu)\n"
              f"/run/pyvmm/busybox wget -q -O - http://$gateway:{port}/blob "
              "| /run/pyvmm/busybox sha256sum\n")
    result = command(kernel, "sh", "-c", script, options=("--net", "user"))
    out = result.stdout.decode(errors="replace")
    assert result.status == 0, (out, result.stderr.decode(errors="replace"))
    assert f"{digest}  -" in out, out
    assert "mtu 65520" in out  # passt's, through the device's config space and DHCP
    assert "eth0" in out and "inet " in out
