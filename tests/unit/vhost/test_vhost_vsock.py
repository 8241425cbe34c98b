"""The kernel's vhost-vsock as pyvmm opens it: errors before the guest starts, the ioctl
numbers from <linux/vhost.h> (vhost-net's too: one binding), ring addresses translated
into this process's."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost import kernel
from pyvmm.vhost._vhost_cffi import ffi, lib
from pyvmm.vhost.frontend import VringConfig
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


class FakeKernel:
    """The binding's two C calls, answering as vhost-vsock would, recording what came."""

    def __init__(self, cid_error: int = 0) -> None:
        self.calls: list[str] = []
        self._names = {getattr(lib, name): name for name in dir(lib) if name.startswith("VHOST_")}
        self._cid_error = cid_error

    def ioctl(self, fd: int, request: int, argument: Any) -> int:
        name = self._names[request]
        self.calls.append(name)
        if name == "VHOST_GET_FEATURES":
            ffi.cast("uint64_t *", argument)[0] = 1 << 32
        if name == "VHOST_VSOCK_SET_GUEST_CID":
            return -self._cid_error
        return 0

    def set_mem_table(self, fd: int, count: int, regions: Any) -> int:
        self.calls.append("VHOST_SET_MEM_TABLE")
        return 0


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, cid_error: int = 0) -> FakeKernel:
    fake = FakeKernel(cid_error)
    monkeypatch.setattr(kernel, "_ioctl", fake.ioctl)
    monkeypatch.setattr(kernel, "_set_mem_table", fake.set_mem_table)
    return fake


def test_the_rings_go_to_the_kernel_and_come_back_on_reset(monkeypatch) -> None:
    fake = _fake_kernel(monkeypatch)
    vsock = VhostVsock(7, "/dev/null")
    try:
        assert fake.calls == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES", "VHOST_VSOCK_SET_GUEST_CID"]
        assert vsock.features == 1 << 32
        memory = GuestMemory([MemoryRegion(0, 1 << 20, bytearray(1 << 20))])
        fake.calls.clear()
        vsock.start(1 << 32, memory, [VringConfig(0, 128, 0x1000, 0x2000, 0x3000, 10, 12),
                                      VringConfig(1, 128, 0x4000, 0x5000, 0x6000, 11, 12)])
        per_ring = ["VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_ADDR",
                    "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL"]
        assert fake.calls == ["VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE", *per_ring,
                              *per_ring, "VHOST_VSOCK_SET_RUNNING"]
        fake.calls.clear()
        vsock.stop()
        assert fake.calls == ["VHOST_VSOCK_SET_RUNNING", "VHOST_GET_VRING_BASE",
                              "VHOST_GET_VRING_BASE"]
    finally:
        vsock.close()


@pytest.mark.parametrize("error, in_use", [(errno.EADDRINUSE, True), (errno.EINVAL, False)])
def test_a_refused_cid_is_one_line_and_says_whether_it_is_taken(monkeypatch, error: int,
                                                                in_use: bool) -> None:
    _fake_kernel(monkeypatch, cid_error=error)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(VsockSetupError) as caught:
        VhostVsock(9, "/dev/null")
    assert caught.value.cid_in_use is in_use and str(caught.value).startswith("--vsock 9: ")
    assert set(os.listdir("/proc/self/fd")) == before
