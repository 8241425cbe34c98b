"""--net tap's host side: the tap link pyvmm serves (frames with their virtio_net_hdr,
offloads both ways) over a stand-in fd and over a real tap, the errors of a tap or a
vhost-net that can't be had, and what the device offers and refuses."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyvmm.devices.virtio.net import (GSO_TCPV4, GSO_TCPV6, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM,
                                      HEADER, OFFLOAD_FEATURES, VIRTIO_NET_F_GUEST_CSUM,
                                      VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
                                      NetDevice)
from pyvmm.errors import ConfigError
from pyvmm.vhost import tap as tap_module
from pyvmm.vhost import vhost_net
from pyvmm.vhost.tap import INPUT_FRAMES, VIRTIO_OFFLOADS, Tap, TapLink
from tests.unit.devices.virtio.test_virtio_net import ETH, MAC, Guest

REPO = Path(__file__).resolve().parents[3]


class StandInTap:
    """What TapLink uses of a Tap: one end of a SOCK_SEQPACKET pair, which keeps frame
    boundaries as a tap does (a read is one frame, a write one frame)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.name = "standin0"
        self.offloads = VIRTIO_OFFLOADS
        self.set: list[int] = []

    def set_offloads(self, features: int) -> None:
        self.set.append(features)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    standin = StandInTap(ours.detach())
    yield standin, theirs
    theirs.close()
    standin.close()


def _guest(standin: StandInTap, refused: int = 0) -> tuple[Guest, TapLink]:
    link = TapLink(standin)  # type: ignore[arg-type]
    device = NetDevice(link, MAC, 1500, header_in_frames=True, offloads=standin.offloads,
                       on_offloads=standin.set_offloads)
    return Guest(device=device, link=link, refused=refused), link  # type: ignore[arg-type]


def _header(flags: int = 0, gso_type: int = 0, gso_size: int = 0) -> bytes:
    return HEADER.pack(flags, gso_type, 54 if gso_type else 0, gso_size, 34 if flags else 0,
                       16 if flags else 0, 0)


def test_the_offloads_the_driver_takes_reach_the_tap(pair) -> None:
    standin, _ = pair
    guest, _ = _guest(standin, refused=1 << VIRTIO_NET_F_GUEST_TSO4)
    assert guest.features() & OFFLOAD_FEATURES == OFFLOAD_FEATURES
    assert standin.set == [OFFLOAD_FEATURES & ~(1 << VIRTIO_NET_F_GUEST_TSO4)]


def test_a_segmentation_offloaded_frame_goes_to_the_tap_with_its_header(pair) -> None:
    standin, peer = pair
    guest, _ = _guest(standin)
    big = ETH + bytes(range(256)) * 160  # 40 KiB: a TSO frame, far over the MTU
    header = _header(HDR_F_NEEDS_CSUM, GSO_TCPV4, 1448)
    guest.transmit(big, header, split=7)
    assert peer.recv(1 << 17) == header + big
    assert guest.device.tx_frames == 1 and guest.device.tx_oversize == 0


def test_the_taps_frames_reach_the_guest_with_num_buffers_and_offload_flags(pair) -> None:
    standin, peer = pair
    guest, link = _guest(standin)
    big = ETH + os.urandom(30000)
    header = _header(HDR_F_NEEDS_CSUM, GSO_TCPV6, 1428)
    peer.send(header + big)
    peer.send(_header(HDR_F_DATA_VALID) + ETH + b"small")
    guest.post_rx(16, size=4096)
    link.fill()
    guest.device.frames_arrived()
    (first, payload), (second, small) = guest.received()
    assert payload == big and first["gso_type"] == GSO_TCPV6 and first["gso_size"] == 1428
    assert first["flags"] == HDR_F_NEEDS_CSUM and first["num_buffers"] == 8
    assert small == ETH + b"small" and second["flags"] == HDR_F_DATA_VALID
    assert second["num_buffers"] == 1


def test_offloads_the_driver_refused_are_dropped_and_counted(pair) -> None:
    standin, peer = pair
    refused = 1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO4 \
        | 1 << VIRTIO_NET_F_GUEST_CSUM
    guest, link = _guest(standin, refused=refused)
    peer.send(_header(HDR_F_NEEDS_CSUM, GSO_TCPV4, 1448) + ETH + bytes(3000))
    peer.send(_header(HDR_F_DATA_VALID) + ETH + b"plain")  # flags cleared: no GUEST_CSUM
    peer.send(b"short")  # less than a header
    guest.post_rx(4)
    link.fill()
    guest.device.frames_arrived()
    [(header, payload)] = guest.received()
    assert payload == ETH + b"plain" and header["flags"] == 0
    assert guest.device.rx_bad_header == 2
    guest.transmit(ETH + bytes(3000), _header(HDR_F_NEEDS_CSUM, GSO_TCPV4, 1448))
    guest.transmit(ETH + bytes(3000))  # over the MTU without GSO
    assert guest.device.tx_bad_header == 1 and guest.device.tx_oversize == 1
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(1 << 17)


def test_read_ahead_is_bounded_and_resumes(pair) -> None:
    standin, peer = pair
    link = TapLink(standin)  # type: ignore[arg-type]
    interest: list[int] = []
    link.on_interest = interest.append
    for index in range(INPUT_FRAMES + 10):
        peer.send(_header() + ETH + index.to_bytes(2, "big"))
    link.fill()
    assert link.wanted_events() == 0 and interest == [0]  # full: the tap is not read
    link.consume_frame()
    assert link.wanted_events() != 0
    link.fill()
    frames = []
    while (frame := link.next_frame()) is not None:
        frames.append(frame)
        link.consume_frame()
        link.fill()
    assert len(frames) == INPUT_FRAMES + 9


def test_a_closed_peer_closes_the_link(pair) -> None:
    standin, peer = pair
    link = TapLink(standin)  # type: ignore[arg-type]
    peer.close()
    link.fill()
    assert link.closed and not link.can_send()


def test_vhost_on_without_vhost_net_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(vhost_net, "VHOST_NET_DEVICE", str(tmp_path / "vhost-net"))
    with pytest.raises(ConfigError, match=r"^--net tap=tap0,vhost=on: cannot open .*vhost-net: "
                                          r"No such file or directory \(modprobe vhost_net\)"):
        vhost_net.open_vhost_net("on", "tap0")
    assert vhost_net.open_vhost_net("auto", "tap0") is None
    assert vhost_net.open_vhost_net("off", "tap0") is None


def test_no_tun_device_is_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tap_module, "TUN_DEVICE", str(tmp_path / "tun"))
    with pytest.raises(ConfigError, match=r"^--net tap=tap0: cannot open .*tun: No such file"):
        Tap("tap0")


def test_why_a_tap_would_not_open() -> None:
    import errno

    def why(code: int, existed: bool) -> str:
        return tap_module._why("tap0", existed, OSError(code, os.strerror(code)))

    assert "there is no tap tap0 and pyvmm may not make one" in why(errno.EPERM, False)
    assert "ip tuntap add tap0 mode tap user" in why(errno.EPERM, True)
    assert why(errno.EBUSY, True) == "the tap is in use by another program"
    assert why(errno.EINVAL, True).startswith("not a tap interface")


needs_tap = pytest.mark.skipif(not os.path.exists("/dev/net/tun") or os.geteuid() != 0,
                               reason="needs /dev/net/tun and root (CAP_NET_ADMIN)")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@needs_tap
def test_a_tap_pyvmm_made_answers_arp_and_goes_when_closed() -> None:
    name = f"pyvmmt{os.getpid() % 100000}"
    tap = Tap(name)
    try:
        assert not tap.existed and os.path.exists(f"/sys/class/net/{name}")
        assert tap.offloads == VIRTIO_OFFLOADS and tap.mtu() == 1500
        tap.set_offloads(OFFLOAD_FEATURES)
        tap.set_offloads(0)
        _ip("addr", "add", "10.254.77.1/24", "dev", name)
        _ip("link", "set", name, "up")
        link = TapLink(tap)
        guest_mac = bytes.fromhex("525400123456")
        arp = (b"\xff" * 6 + guest_mac + b"\x08\x06" + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1)
               + guest_mac + bytes([10, 254, 77, 2]) + bytes(6) + bytes([10, 254, 77, 1]))
        link.send(bytes(HEADER.size) + arp)
        import select

        poller = select.poll()
        poller.register(link.fileno(), select.POLLIN)
        reply = None
        for _ in range(50):  # IPv6 router solicitations may come first
            poller.poll(2000)
            link.fill()
            while (frame := link.next_frame()) is not None:
                link.consume_frame()
                if frame[HEADER.size + 12:HEADER.size + 14] == b"\x08\x06":
                    reply = frame[HEADER.size:]
            if reply:
                break
        assert reply is not None and reply[:6] == guest_mac
        assert reply[28:32] == bytes([10, 254, 77, 1])  # the host's address answered
    finally:
        tap.close()
    assert not os.path.exists(f"/sys/class/net/{name}")


@needs_tap
def test_an_interface_that_is_not_a_tap_is_one_line_exit_2(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"not a kernel" * 100)
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "-k", str(kernel),
                             "--net", "tap=lo"], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "pyvmm: error: --net tap=lo: not a tap interface (a tun, another kind of interface, "
        "or a multiqueue tap)"], result.stderr
