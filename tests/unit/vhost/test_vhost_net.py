"""vhost-net's ioctls as pyvmm sends them (a recording stand-in for fcntl.ioctl): the order
QEMU uses, guest-physical ring addresses turned into pyvmm's own, the tap behind each
ring, the features vhost-net may see, and the rings taken back on reset."""

from __future__ import annotations

import fcntl
import os
import struct

import pytest

from pyvmm.errors import ConfigError, DeviceError
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost import vhost_net
from pyvmm.vhost.frontend import VringConfig
from pyvmm.vhost.vhost_net import (MEMORY_HEAD, MEMORY_REGION, VRING_ADDR, VRING_FILE,
                                   VRING_STATE, VhostNet)

NAMES = {value: name for name, value in vars(vhost_net).items()
         if name.startswith("VHOST_") and isinstance(value, int)}
KERNEL_FEATURES = (1 << 32) | (1 << 29) | (1 << 28) | (1 << 27) | (1 << 15) | (1 << 26)


class FakeTap:
    name = "tap0"
    fd = 77
    offloads = 1 << 0 | 1 << 1

    def __init__(self) -> None:
        self.offloads_set: list[int] = []

    def set_offloads(self, features: int) -> None:
        self.offloads_set.append(features)


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, bytes | int]]:
    recorded: list[tuple[str, bytes | int]] = []

    def ioctl(fd: int, request: int, argument=0):
        assert fd == 5
        name = NAMES[request]
        recorded.append((name, bytes(argument) if not isinstance(argument, int) else argument))
        if name == "VHOST_GET_FEATURES":
            argument[:] = struct.pack("<Q", KERNEL_FEATURES)
        if name == "VHOST_GET_VRING_BASE":
            argument[4:8] = struct.pack("<I", 42)
        return 0

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
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
    names = [name for name, _ in calls]
    per_ring = ["VHOST_SET_VRING_NUM", "VHOST_SET_VRING_BASE", "VHOST_SET_VRING_ADDR",
                "VHOST_SET_VRING_KICK", "VHOST_SET_VRING_CALL", "VHOST_NET_SET_BACKEND"]
    assert names == ["VHOST_SET_FEATURES", "VHOST_SET_MEM_TABLE"] + per_ring * 2
    assert struct.unpack("<Q", calls[0][1]) == ((1 << 32) | (1 << 29) | (1 << 15),)
    table = calls[1][1]
    assert isinstance(table, bytes)
    assert MEMORY_HEAD.unpack_from(table) == (2, 0)
    assert [MEMORY_REGION.unpack_from(table, MEMORY_HEAD.size + i * MEMORY_REGION.size)
            for i in range(2)] == [(0, 1 << 20, bases[0], 0),
                                   (4 << 30, 1 << 20, bases[4 << 30], 0)]
    addr = calls[4][1]
    assert isinstance(addr, bytes)
    assert VRING_ADDR.unpack(addr) == (0, 0, bases[0] + 0x1000, bases[0] + 0x3000,
                                       bases[0] + 0x2000, 0)
    second = calls[10][1]
    assert isinstance(second, bytes)
    assert VRING_ADDR.unpack(second)[2] == bases[4 << 30] + 0x4000
    assert VRING_FILE.unpack(calls[7][1]) == (0, 77)  # type: ignore[arg-type]
    assert VRING_STATE.unpack(calls[2][1]) == (0, 256)  # type: ignore[arg-type]
    calls.clear()
    net.stop()
    assert [(name, VRING_FILE.unpack(arg) if name.endswith("BACKEND") else None)
            for name, arg in calls] == [  # type: ignore[arg-type]
        ("VHOST_NET_SET_BACKEND", (0, -1)), ("VHOST_GET_VRING_BASE", None),
        ("VHOST_NET_SET_BACKEND", (1, -1)), ("VHOST_GET_VRING_BASE", None)]


def test_a_ring_outside_guest_ram_is_a_device_error(calls) -> None:
    memory = GuestMemory([MemoryRegion(0, 1 << 20, bytearray(1 << 20))])
    net = VhostNet(5, FakeTap(), lambda buffer: 0x1000_0000)  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match="a ring at 0x200000 is outside guest RAM"):
        net.start(1 << 32, memory, [VringConfig(0, 256, 2 << 20, 0x2000, 0x3000, 10, 12)])


def test_a_refusing_kernel_is_one_config_line(monkeypatch) -> None:
    def ioctl(fd: int, request: int, argument=0):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    monkeypatch.setattr(os, "close", lambda fd: None)
    with pytest.raises(ConfigError, match=r"^--net tap=tap0: vhost-net for tap tap0: "
                                          r"VHOST_SET_OWNER refused: Operation not permitted$"):
        VhostNet(5, FakeTap(), lambda buffer: 0)  # type: ignore[arg-type]
