"""``--net tap=NAME`` in command mode under Debian's kernel: the guest reaches an address
on the host's side of the tap and fetches a file over HTTP whose hash matches, with the
queues served by the kernel's vhost-net (vhost=on) and by pyvmm (vhost=off).

Needs hardware KVM (the rig), root (the test makes the tap: ``ip tuntap add``), and
``/dev/net/tun`` (in the rig: ``modprobe tun vhost_net``, done here when it runs there).
The host side of the tap is 10.0.3.1/24; CMD gives the guest 10.0.3.2 (command mode
only brings a tap NIC up: there is no DHCP server behind a tap of ours).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.host_kernels import debian_kernel

from .test_command_mode import command
from .test_net import serving_random_file

TAP = "pyvmmtap0"
HOST, GUEST = "10.0.3.1", "10.0.3.2"


def _modprobe_in_the_rig() -> None:
    if os.environ.get("RIG") == "1" and os.geteuid() == 0:
        for module in ("tun", "vhost_net"):
            subprocess.run(["modprobe", module], capture_output=True)
        # The tap's host address is local: the host reaches it through lo, down in the rig.
        subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True)


_modprobe_in_the_rig()

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root (to make the tap) and /dev/net/tun")


@pytest.fixture
def kernel() -> str:
    path = debian_kernel()
    if path is None:
        pytest.skip("no Debian kernel in /boot")
    return str(path)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def tap():
    """A persistent tap with the host's address on it, deleted afterwards."""
    subprocess.run(["ip", "link", "del", TAP], capture_output=True)
    _ip("tuntap", "add", TAP, "mode", "tap")
    try:
        _ip("addr", "add", f"{HOST}/24", "dev", TAP)
        _ip("link", "set", TAP, "up")
        yield TAP
    finally:
        subprocess.run(["ip", "link", "del", TAP], capture_output=True)


@pytest.fixture
def http_server(tmp_path: Path, tap: str):
    """A file of random bytes served on the tap's host address: (port, its sha256)."""
    with serving_random_file(tmp_path, HOST) as served:
        yield served


@pytest.mark.parametrize("vhost", ["on", "off"])
def test_the_guest_fetches_a_file_from_the_taps_host_side(kernel: str, http_server,
                                                         vhost: str) -> None:
    if vhost == "on" and not os.path.exists("/dev/vhost-net"):
        pytest.skip("no /dev/vhost-net (modprobe vhost_net)")
    port, digest = http_server
    bb = "/run/pyvmm/busybox"
    script = (f"{bb} ip addr add {GUEST}/24 dev eth0 || exit 9\n"
              f"echo mtu $(cat /sys/class/net/eth0/mtu)\n"
              f"{bb} wget -q -O - http://{HOST}:{port}/blob | {bb} sha256sum\n")
    result = command(kernel, "sh", "-c", script, options=("--net", f"tap={TAP},vhost={vhost}"))
    out = result.stdout.decode(errors="replace")
    assert result.status == 0, (out, result.stderr.decode(errors="replace"))
    assert f"{digest}  -" in out, out
    assert "mtu 1500" in out  # the tap's, through the device's config space

