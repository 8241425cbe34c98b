"""The GDB remote protocol's framing: checksums, acks, escapes, run-length, limits, fuzz."""

from __future__ import annotations

import random

import pytest

from pyvmm.gdb.packets import (MAX_BAD_CHECKSUMS, MAX_PACKET, Interrupt, Packet, PacketReader,
                               ProtocolError, checksum, escape, frame, rle_decode, rle_encode,
                               unescape)


def test_checksum_and_frame() -> None:
    # 'O' 0x4f + 'K' 0x4b = 0x9a
    assert checksum(b"OK") == 0x9A
    assert frame(b"OK") == b"$OK#9a"
    assert frame(b"") == b"$#00"


def test_a_packet_is_acked_and_delivered() -> None:
    reader = PacketReader()
    events, acks = reader.feed(b"$qSupported:swbreak+;hwbreak+#d5")
    assert events == [Packet(b"qSupported:swbreak+;hwbreak+")]
    assert acks == b"+"


def test_a_packet_split_over_many_reads() -> None:
    reader = PacketReader()
    out = []
    for byte in b"+$OK#9a":
        events, acks = reader.feed(bytes((byte,)))
        out += events
    assert out == [Packet(b"OK")]


def test_bad_checksum_is_nacked_and_dropped() -> None:
    reader = PacketReader()
    assert reader.feed(b"$OK#9b") == ([], b"-")
    assert reader.feed(b"$OK#zz") == ([], b"-")
    assert reader.feed(b"$OK#9a") == ([Packet(b"OK")], b"+")


def test_too_many_bad_checksums_in_a_row_end_the_connection() -> None:
    reader = PacketReader()
    with pytest.raises(ProtocolError, match="bad checksums"):
        for _ in range(MAX_BAD_CHECKSUMS + 1):
            reader.feed(b"$OK#00")


def test_interrupt_and_acks_between_packets() -> None:
    reader = PacketReader()
    events, acks = reader.feed(b"+\x03-$g#67\x03")
    assert events == [Interrupt(), Packet(b"g"), Interrupt()]
    assert acks == b"+"


def test_no_ack_mode_sends_no_acks() -> None:
    reader = PacketReader()
    reader.no_ack = True
    assert reader.feed(b"$OK#9a$OK#00") == ([Packet(b"OK")], b"")


def test_a_dollar_inside_a_packet_starts_it_again() -> None:
    assert PacketReader().feed(b"$garb$OK#9a") == ([Packet(b"OK")], b"+")


def test_escapes() -> None:
    # '#' 0x23 ^ 0x20 = 0x03, '$' -> 0x04, '}' -> 0x5d, '*' -> 0x0a
    assert escape(b"a#$}*b") == b"a}\x03}\x04}]}\x0ab"
    assert unescape(b"a}\x03}\x04}]}\x0ab") == b"a#$}*b"
    with pytest.raises(ProtocolError):
        unescape(b"ab}")


def test_run_length_encoding() -> None:
    # ten '0's: the first, then 9 repeats, count 9 + 29 = 38 = '&'
    assert rle_encode(b"0" * 10) == b"0*&"
    # seven: 6 repeats would be '#': five repeats ('"') and one literal
    assert rle_encode(b"0" * 7) == b'0*"0'
    assert rle_encode(b"abc000") == b"abc000"  # short runs stay literal
    for data in (b"0" * 10, b"0" * 7, b"0" * 8, b"x" * 300 + b"yz" + b"y" * 50):
        assert rle_decode(rle_encode(data)) == data
    assert rle_decode(b"a*#") == b"a" * 7  # a count of 6 decodes though it is never sent


def test_frame_uses_run_length_and_the_reader_expands_it() -> None:
    framed = frame(b"0" * 100)
    assert len(framed) < 20
    events, _ = PacketReader().feed(framed)
    assert events == [Packet(b"0" * 100)]


@pytest.mark.parametrize("payload", [b"*", b"a*", b"a*\x01", b"a*\xff"])
def test_malformed_run_length_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        rle_decode(payload)


def test_an_endless_packet_is_refused_with_bounded_memory() -> None:
    reader = PacketReader()
    with pytest.raises(ProtocolError, match="longer than"):
        for _ in range(100):
            reader.feed(b"$" + b"a" * (MAX_PACKET // 4))
            reader.feed(b"a" * MAX_PACKET)


def test_noise_outside_packets_is_dropped_not_kept() -> None:
    reader = PacketReader()
    for _ in range(64):
        assert reader.feed(b"x" * 65536) == ([], b"")
    assert len(reader._buffer) == 0


def test_fuzzed_streams_give_packets_or_a_protocol_error_only() -> None:
    """Random bytes, biased towards the protocol's own characters."""
    rng = random.Random(24)
    alphabet = b"$#}*+-\x030123456789abcdefgmMXZzqv:;,"
    for _ in range(1000):
        reader = PacketReader()
        try:
            for _ in range(rng.randrange(1, 6)):
                size = rng.randrange(0, 200)
                chunk = bytes(rng.choice(alphabet) if rng.random() < 0.8 else rng.randrange(256)
                              for _ in range(size))
                events, acks = reader.feed(chunk)
                assert set(acks) <= set(b"+-")
                assert all(isinstance(e, (Packet, Interrupt)) for e in events)
        except ProtocolError:
            pass
