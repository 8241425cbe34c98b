"""The real passt on a socketpair (no VM): it answers a DHCP request through our
framing, says why it died in one line, and leaves nothing behind."""

from __future__ import annotations

import os
import select
import shutil
import struct
import time

import pytest

from pyvmm.errors import ConfigError
from pyvmm.vhost.passt import PASST_MTU, PasstProcess, find_passt
from pyvmm.vhost.stream import FrameStream

needs_passt = pytest.mark.skipif(shutil.which("passt") is None, reason="passt not installed")
MAC = bytes.fromhex("525400123456")


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def dhcp_discover() -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, 0x8000,
                        bytes(4), bytes(4), bytes(4), bytes(4), MAC + bytes(10), bytes(64),
                        bytes(128)) + bytes([99, 130, 83, 99, 53, 1, 1, 55, 2, 1, 26, 255])
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                               bytes(4), b"\xff" * 4))
    ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
    return b"\xff" * 6 + MAC + b"\x08\x00" + bytes(ip) + udp


def dhcp_options(frame: bytes) -> dict[int, bytes]:
    options, position = {}, 14 + 20 + 8 + 240
    while frame[position] != 255:
        code, length = frame[position], frame[position + 1]
        options[code] = frame[position + 2:position + 2 + length]
        position += 2 + length
    return options


def wait_frame(stream: FrameStream, seconds: float = 5) -> bytes:
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN)
    while time.monotonic() < deadline:
        poller.poll(100)
        stream.fill()
        frame = stream.next_frame()
        if frame is not None:
            stream.consume_frame()
            return frame
    raise AssertionError("no frame from passt")


@needs_passt
def test_passt_answers_dhcp_through_the_stream() -> None:
    passt = PasstProcess(find_passt(), [], "passt for a test")
    try:
        stream = FrameStream(passt.sock)
        stream.send(dhcp_discover())
        while True:
            reply = wait_frame(stream)
            if reply[12:14] == b"\x08\x00" and reply[23] == 17 and reply[36:38] == b"\x00\x44":
                break
        assert reply[:6] == MAC
        options = dhcp_options(reply)
        assert options[53] == b"\x02"                                 # DHCPOFFER
        assert struct.unpack("!H", options[26])[0] == PASST_MTU       # the MTU we announce
        assert reply[14 + 20 + 8 + 16:14 + 20 + 8 + 20] != bytes(4)   # yiaddr: an address
    finally:
        directory = passt._dir
        passt.close()
    assert passt.process.returncode is not None and not os.path.exists(directory)


@needs_passt
def test_a_passt_that_fails_says_why() -> None:
    passt = PasstProcess(find_passt(), [("tcp", "80:80:80")], "passt for --net 0")
    try:
        passt.process.wait(5)
        assert passt.death_reason() == \
            "passt for --net 0 exited with status 1: Invalid port specifier 80:80:80"
    finally:
        passt.close()


def test_no_passt_is_a_config_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PYVMM_PASST", raising=False)
    with pytest.raises(ConfigError, match=r"^--net user needs passt: apt-get install passt"):
        find_passt()
    monkeypatch.setenv("PYVMM_PASST", str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="is not an executable"):
        find_passt()


def test_both_ends_of_passts_socket_get_big_send_buffers() -> None:
    """As much as the kernel grants (it doubles what is asked, up to twice wmem_max; all
    of it with CAP_NET_ADMIN): a 64 KiB frame is one of many per wake-up, not of three."""
    import socket

    from pyvmm.vhost.passt import SOCKET_BUFFER, grow_send_buffer

    with open("/proc/sys/net/core/wmem_max") as limit:
        granted = 2 * min(SOCKET_BUFFER, int(limit.read()))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        grow_send_buffer(ours)
        assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= granted
