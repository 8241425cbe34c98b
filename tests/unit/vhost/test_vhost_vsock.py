"""The kernel's vhost-vsock as pyvmm opens it: errors before the guest starts, the ioctl
numbers from <linux/vhost.h> (vhost-net's too: one binding), ring addresses translated
into this process's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvmm.errors import DeviceError
from pyvmm.vhost._vhost_cffi import lib
from pyvmm.vhost.kernel import HostRange, host_address
from pyvmm.vhost.vsock import VhostVsock, VsockSetupError


def _iow(number: int, size: int) -> int:
    """The kernel's _IOW(VHOST_VIRTIO, number, size)."""
    return (1 << 30) | (size << 16) | (0xAF << 8) | number


def test_the_ioctl_numbers_are_the_kernels() -> None:
    assert lib.VHOST_VSOCK_SET_GUEST_CID == _iow(0x60, 8) == 0x4008AF60
    assert lib.VHOST_VSOCK_SET_RUNNING == _iow(0x61, 4)
    assert lib.VHOST_SET_OWNER == 0xAF01
    assert lib.VHOST_SET_VRING_ADDR == _iow(0x11, 40)
    assert lib.VHOST_SET_VRING_KICK == _iow(0x20, 8)
    assert lib.VHOST_NET_SET_BACKEND == _iow(0x30, 8)


def test_a_missing_device_is_one_line_naming_the_module(tmp_path: Path) -> None:
    with pytest.raises(VsockSetupError) as caught:
        VhostVsock(3, str(tmp_path / "vhost-vsock"))
    message = str(caught.value)
    assert message.startswith("--vsock 3: cannot open ") and "modprobe vhost_vsock" in message
    assert "\n" not in message and caught.value.exit_status == 2


def test_a_device_without_access_says_so(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root opens anything")
    node = tmp_path / "vhost-vsock"
    node.write_bytes(b"")
    node.chmod(0)
    with pytest.raises(VsockSetupError, match="read-write access"):
        VhostVsock(3, str(node))


def test_a_device_that_is_not_vhost_is_refused_and_closed() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(DeviceError, match="^vhost-vsock: VHOST_SET_OWNER refused: "):
        VhostVsock(3, "/dev/null")
    assert set(os.listdir("/proc/self/fd")) == before


def test_ring_addresses_are_translated_within_one_range() -> None:
    ranges = [HostRange(0, 0x10000, 0x7F00_0000_0000), HostRange(1 << 32, 0x1000, 0x7F10_0000_0000)]
    assert host_address(ranges, 0x1000, 16 * 128) == 0x7F00_0000_1000
    assert host_address(ranges, (1 << 32) + 0x10, 0x100) == 0x7F10_0000_0010
    with pytest.raises(DeviceError, match="not in guest RAM"):
        host_address(ranges, 0xFF00, 0x200)  # runs past the end of the range
    with pytest.raises(DeviceError, match="not in guest RAM"):
        host_address(ranges, 0x20000, 16)
