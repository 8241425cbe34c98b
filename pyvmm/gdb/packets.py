"""The GDB remote protocol's framing: ``$payload#checksum``, acks, escapes, run-length.

``PacketReader.feed`` takes whatever bytes the socket gave and returns what
they hold, in order: complete packets (payload bytes, run-length expanded,
checksum checked), interrupts (a bare 0x03, gdb's Ctrl-C) and the acks it
must send.  It keeps at most one packet's worth of bytes, so a client that
never ends a packet costs bounded memory; a packet longer than
``MAX_PACKET`` or too many bad checksums in a row is a ``ProtocolError``
(the server then closes the connection).  ``frame`` builds a reply.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest packet (payload bytes as sent) we take or send; qSupported announces it.
PACKET_SIZE = 0x4000
#: Incoming payloads may be a little larger (gdb counts escapes differently).
MAX_PACKET = 2 * PACKET_SIZE
#: Bad checksums in a row before we give up on the client.
MAX_BAD_CHECKSUMS = 16
INTERRUPT = 0x03
#: Bytes escaped in binary data (``}`` then the byte xor 0x20).
ESCAPED = frozenset(b"#$}*")
ESCAPE = 0x7D
#: Run-length counts are the character after ``*`` minus 29; ``#`` (6) and ``$`` (7)
#: are unusable, and a count may not pass '~' (97).
RLE_BASE = 29
RLE_MAX = 126 - RLE_BASE


class ProtocolError(Exception):
    """The client's bytes are not the protocol (or are hostile): drop the connection."""


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """gdb's Ctrl-C: stop the target."""


Event = Packet | Interrupt


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data as the protocol carries it (``X`` packets, ``qXfer`` replies)."""
    if not ESCAPED.intersection(data):
        return data
    out = bytearray()
    for byte in data:
        if byte in ESCAPED:
            out += bytes((ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The binary data of an escaped run; ProtocolError on a dangling escape."""
    if ESCAPE not in data:
        return data
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == ESCAPE:
            following = next(it, None)
            if following is None:
                raise ProtocolError("binary data ends in an escape")
            out.append(following ^ 0x20)
        else:
            out.append(byte)
    return bytes(out)


def rle_encode(data: bytes) -> bytes:
    """Runs of four or more of a byte as ``c*N`` (gdb expands them in every reply)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        run = 1
        while i + run < n and data[i + run] == byte and run - 1 < RLE_MAX:
            run += 1
        repeats = run - 1
        if repeats in (6, 7):  # '#' and '$' can't be counts: send one repeat fewer
            repeats = 5
        if repeats >= 3 and byte not in ESCAPED:
            out += bytes((byte, ord("*"), repeats + RLE_BASE))
            i += repeats + 1
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def rle_decode(data: bytes, limit: int = MAX_PACKET * 4) -> bytes:
    """Expand ``c*N``; ProtocolError when malformed or larger than ``limit``."""
    if b"*" not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == ord("*"):
            if not out or i + 1 >= n:
                raise ProtocolError("a run-length count with nothing to repeat")
            count = data[i + 1] - RLE_BASE
            if not 3 <= count <= RLE_MAX:
                raise ProtocolError(f"bad run-length count {count}")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(byte)
            i += 1
        if len(out) > limit:
            raise ProtocolError("a packet expands past its limit")
    return bytes(out)


def frame(payload: bytes, rle: bool = True) -> bytes:
    """``$payload#cs`` for a reply (run-length encoded when ``rle``)."""
    body = rle_encode(payload) if rle else payload
    return b"$" + body + b"#%02x" % checksum(body)


class PacketReader:
    """Bytes in, packets out: the receiving half of the framing, acks included."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_packet = False
        self._bad_checksums = 0
        #: After QStartNoAckMode: no acks sent, none expected.
        self.no_ack = False

    def feed(self, data: bytes) -> tuple[list[Event], bytes]:
        """The events in ``data`` and the bytes to send back (acks)."""
        events: list[Event] = []
        acks = bytearray()
        buffer = self._buffer
        for byte in data:
            if not self._in_packet:
                if byte == ord("$"):
                    self._in_packet = True
                    buffer.clear()
                elif byte == INTERRUPT:
                    events.append(Interrupt())
                # '+', '-' and noise between packets are ignored (gdb's acks of our replies)
                continue
            if byte == ord("$"):  # a packet cut short: resynchronise on the new one
                buffer.clear()
                continue
            buffer.append(byte)
            if len(buffer) > MAX_PACKET + 3:
                raise ProtocolError(f"a packet longer than {MAX_PACKET} bytes")
            if len(buffer) >= 3 and buffer[-3] == ord("#"):
                self._in_packet = False
                body, sent = bytes(buffer[:-3]), bytes(buffer[-2:])
                buffer.clear()
                try:
                    good = int(sent, 16) == checksum(body)
                except ValueError:
                    good = False
                if not good:
                    self._bad_checksums += 1
                    if self._bad_checksums > MAX_BAD_CHECKSUMS:
                        raise ProtocolError(f"{self._bad_checksums} bad checksums in a row")
                    if not self.no_ack:
                        acks += b"-"  # gdb sends it again
                    continue
                self._bad_checksums = 0
                if not self.no_ack:
                    acks += b"+"
                events.append(Packet(rle_decode(body)))
        return events, bytes(acks)
