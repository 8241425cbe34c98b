"""A small AML encoder: the subset of ACPI Machine Language a micro-VM's DSDT needs.

Each function returns the encoded bytes (ACPI 6.5, chapter 20).  Enough for
named objects, devices, scopes, methods that return a value, packages, and
resource templates with I/O, fixed memory and interrupt descriptors.
"""

from __future__ import annotations

import struct

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
ROOT_CHAR = 0x5C
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
RETURN_OP = 0xA4

#: An AML object: already-encoded bytes, or a Python value encoded on use.
Value = bytes | int | str


def pkg_length(payload_length: int) -> bytes:
    """PkgLength for ``payload_length`` bytes that follow it (it counts itself too)."""
    if payload_length + 1 < 0x40:
        return bytes([payload_length + 1])
    for extra in (1, 2, 3):
        total = payload_length + 1 + extra
        if total < 1 << (4 + 8 * extra):
            encoded = bytes([(extra << 6) | (total & 0xF)])
            return encoded + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {payload_length} bytes is too large")


def name_seg(segment: str) -> bytes:
    if not 1 <= len(segment) <= 4 or not (segment[0].isupper() or segment[0] == "_"):
        raise ValueError(f"bad AML name segment {segment!r}")
    return segment.ljust(4, "_").encode("ascii")


def name_string(name: str) -> bytes:
    """``\\_SB_.COM1`` style paths: an optional root, then 4-character segments."""
    prefix = b""
    if name.startswith("\\"):
        prefix, name = bytes([ROOT_CHAR]), name[1:]
    segments = [name_seg(s) for s in name.split(".")] if name else []
    if len(segments) == 0:
        return prefix + b"\0"
    if len(segments) == 1:
        return prefix + segments[0]
    if len(segments) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    return prefix + bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)


def integer(value: int) -> bytes:
    """The shortest encoding of ``value`` (Zero/One/Ones ops or a prefixed constant)."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} out of range")
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    return bytes([QWORD_PREFIX]) + value.to_bytes(8, "little")


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def encode(value: Value) -> bytes:
    """An object from a Python value: int -> Integer, str -> String, bytes as is."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return integer(int(value))
    if isinstance(value, int):
        return integer(value)
    return string(value)


def name(path: str, value: Value) -> bytes:
    """``Name(path, value)``."""
    return bytes([NAME_OP]) + name_string(path) + encode(value)


def package(*elements: Value) -> bytes:
    """``Package() {elements}``."""
    body = bytes([len(elements)]) + b"".join(encode(e) for e in elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """``Buffer() {data}``."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *children: bytes) -> bytes:
    body = name_string(path) + b"".join(children)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *children: bytes) -> bytes:
    body = name_string(path) + b"".join(children)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, args: int, serialized: bool, *body_terms: bytes) -> bytes:
    if not 0 <= args <= 7:
        raise ValueError("an AML method takes 0 to 7 arguments")
    body = name_string(path) + bytes([args | (0x08 if serialized else 0)]) + b"".join(body_terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


def return_(value: Value) -> bytes:
    return bytes([RETURN_OP]) + encode(value)


def eisa_id(text: str) -> bytes:
    """``EISAID("PNP0501")``: three letters and four hex digits packed in a DWord."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA ID {text!r}")
    vendor = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    product = int(text[3:], 16)
    raw = vendor.to_bytes(2, "big") + product.to_bytes(2, "big")
    return bytes([DWORD_PREFIX]) + raw


# -- resource templates (ACPI 6.5 section 6.4) ----------------------------------------

def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """``IO(Decode16, base, base, alignment, length)``: small item 0x47."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, alignment, length)


def irq_no_flags(irq: int) -> bytes:
    """``IRQNoFlags() {irq}``: an ISA IRQ, edge-triggered, active high."""
    return struct.pack("<BH", 0x22, 1 << irq)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """``Memory32Fixed(ReadWrite, base, length)``: large item 0x86."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


def interrupt(irq: int, edge: bool = True, active_low: bool = False,
              shared: bool = False) -> bytes:
    """``Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|Low, Exclusive|Shared) {irq}``."""
    flags = 0x01 | (0x02 if edge else 0) | (0x04 if active_low else 0) | \
        (0x08 if shared else 0)
    return struct.pack("<BHBBI", 0x89, 6, flags, 1, irq)


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() {...}``: a buffer ending in an End Tag (checksum 0: none)."""
    return buffer(b"".join(descriptors) + bytes([0x79, 0x00]))
