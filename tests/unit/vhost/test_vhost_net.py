"""vhost-net's ioctls as pyvmm sends them (a recording stand-in for the binding's ioctl
call): the order QEMU uses, guest-physical ring addresses turned into pyvmm's own, the
tap behind each ring, the features vhost-net may see, and the rings taken back on reset."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from pyvmm.errors import ConfigError, DeviceError
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost import kernel
from pyvmm.vhost._vhost_cffi import ffi, lib
from pyvmm.vhost.frontend import VringConfig
from pyvmm.vhost.vhost_net import VhostNet

NAMES = {getattr(lib, name): name for name in dir(lib) if name.startswith("VHOST_")}
KERNEL_FEATURES = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 27) | (1 << 15) | (1 << 26)


class FakeTap:
    name = "tap0"
    fd = 77
    offloads = 1 << 0 | 1 << 1

    def __init__(self) -> None:
        self.offloads_set: list[int] = []

    def set_offloads(self, features: int) -> None:
        self.offloads_set.append(features)


def _decoded(name: str, argument: Any) -> Any:
    """What an ioctl's argument says, as plain values."""
    if name.endswith(("_FEATURES",)):
        return int(ffi.cast("uint64_t *", argument)[0])
    if name in ("VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_GET_VRING_BASE"):
        state = ffi.cast("struct vhost_vring_state *", argument)
        return (state.index, state.num)
    if name == "VHOST_SET_VRING_ADDR":
        addr = ffi.cast("struct vhost_vring_addr *", argument)
        return (addr.index, addr.flags, addr.desc_user_addr, addr.used_user_addr,
                addr.avail_user_addr, addr.log_guest_addr)
    if name in ("VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL", "VHOST_NET_SET_BACKEND"):
        file = ffi.cast("struct vhost_vring_file *", argument)
        return (file.index, file.fd)
    return None


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, Any]]:
    recorded: list[tuple[str, Any]] = []

    def ioctl(fd: int, request: int, argument: Any) -> int:
        assert fd == 5
        name = NAMES[request]
        recorded.append((name, _decoded(name, argument)))
        if name == "VHOST_GET_FEATURES":
            ffi.cast("uint64_t *", argument)[0] = KERNEL_FEATURES
        if name == "VHOST_GET_VRING_BASE":
            ffi.cast("struct vhost_vring_state *", argument).num = 42
        return 0

    def set_mem_table(fd: int, count: int, regions: Any) -> int:
        recorded.append(("VHOST_SET_MEM_TABLE", [
            (r.guest_phys_addr, r.memory_size, r.userspace_addr, r.flags_padding)
            for r in regions[0:count]]))
        return 0

    monkeypatch.setattr(kernel, "_ioctl", ioctl)
    monkeypatch.setattr(kernel, "_set_mem_table", set_mem_table)
    monkeypatch.setattr(os, "close", lambda fd: None)
    return recorded


def test_the_rings_and_the_tap_go_to_the_kernel_in_qemus_order(calls) -> None:
    memory = GuestMemory([MemoryRegion(0, 1 << 20, bytearray(1 << 20)),
                          MemoryRegion(4 << 30, 1 << 20, bytearray(1 << 20))])
    bases = {0: 0x7F00_0000_0000, 4 << 30: 0x7F10_0000_0000}
    regions = {id(r.buffer): bases[r.guest_base] for r in memory.regions}
    tap = FakeTap()
    net = VhostNet(5, tap, lambda buffer: regions[id(buffer)])  # type: ignore[arg-type]
    assert [name for name, _ in calls] == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES"]
    # The rings' features and the tap's offloads; never logging (26) nor the header bit (27).
    assert net.offered_features() == (1 << 32) | (1 << 29) | (1 << 28) | (1 << 15) | 0b11
    calls.clear()
    rings = [VringConfig(0, 256, 0x1000, 0x2000, 0x3000, 10, 12),
             VringConfig(1, 256, (4 << 30) + 0x4000, (4 << 30) + 0x5000, (4 << 30) + 0x6000,
                         11, 12)]
    negotiated = (1 << 32) | (1 << 29) | (1 << 15) | 0b11 | (1 << 5)
    net.start(negotiated, memory, rings)
    assert tap.offloads_set == [negotiated]
    high = bases[4 << 30]
    assert calls == [
        ("VHOST_SET_FEATURES", (1 << 32) | (1 << 29) | (1 << 15)),
        ("VHOST_SET_MEM_TABLE", [(0, 1 << 20, bases[0], 0), (4 << 30, 1 << 20, high, 0)]),
        ("VHOST_SET_VRING_NUM", (0, 256)), ("VHOST_SET_VRING_BASE", (0, 0)),
        ("VHOST_SET_VRING_ADDR", (0, 0, bases[0] + 0x1000, bases[0] + 0x3000,
                                  bases[0] + 0x2000, 0)),
        ("VHOST_SET_VRING_KICK", (0, 10)), ("VHOST_SET_VRING_CALL", (0, 12)),
        ("VHOST_NET_SET_BACKEND", (0, 77)),
        ("VHOST_SET_VRING_NUM", (1, 256)), ("VHOST_SET_VRING_BASE", (1, 0)),
        ("VHOST_SET_VRING_ADDR", (1, 0, high + 0x4000, high + 0x6000, high + 0x5000, 0)),
        ("VHOST_SET_VRING_KICK", (1, 11)), ("VHOST_SET_VRING_CALL", (1, 12)),
        ("VHOST_NET_SET_BACKEND", (1, 77))]
    calls.clear()
    net.stop()
    assert calls == [("VHOST_NET_SET_BACKEND", (0, -1)), ("VHOST_GET_VRING_BASE", (0, 0)),
                     ("VHOST_NET_SET_BACKEND", (1, -1)), ("VHOST_GET_VRING_BASE", (1, 0))]


def test_a_ring_outside_guest_ram_is_a_device_error(calls) -> None:
    memory = GuestMemory([MemoryRegion(0, 1 << 20, bytearray(1 << 20))])
    net = VhostNet(5, FakeTap(), lambda buffer: 0x1000_0000)  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match=r"^vhost-net for tap tap0: a ring at 0x200000\+"
                                          r"0x1000 is not in guest RAM$"):
        net.start(1 << 32, memory, [VringConfig(0, 256, 2 << 20, 0x2000, 0x3000, 10, 12)])


def test_a_refusing_kernel_is_one_config_line(monkeypatch) -> None:
    monkeypatch.setattr(kernel, "_ioctl", lambda fd, request, argument: -errno.EPERM)
    monkeypatch.setattr(os, "close", lambda fd: None)
    with pytest.raises(ConfigError, match=r"^--net tap=tap0: vhost-net for tap tap0: "
                                          r"VHOST_SET_OWNER refused: Operation not permitted$"):
        VhostNet(5, FakeTap(), lambda buffer: 0)  # type: ignore[arg-type]
