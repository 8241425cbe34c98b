#!/usr/bin/env python3
"""Wrap a tiny guest's flat binary as a bzImage (Linux x86 boot protocol 2.15).

The real-mode part is a boot sector plus one setup sector holding only the
setup header (we never run real-mode code); the payload is the flat binary,
linked at 1 MiB, whose byte 0x200 is the 64-bit entry.

usage: mkbzimage.py FLAT_BINARY INIT_SIZE OUTPUT
"""

from __future__ import annotations

import struct
import sys

SETUP_SECTS = 1
SECTOR = 512
LOAD_ADDRESS = 0x100000
PROTOCOL = 0x020F
LOADED_HIGH = 0x01
XLF_KERNEL_64 = 0x01
CMDLINE_SIZE = 2047
INITRD_ADDR_MAX = 0x7FFFFFFF
KERNEL_ALIGNMENT = 0x1000


def build(payload: bytes, init_size: int) -> bytes:
    setup = bytearray((SETUP_SECTS + 1) * SECTOR)
    header_end = 0x268
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<I", setup, 0x1F4, (len(payload) + 15) // 16)  # syssize
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, header_end - 0x202])  # jmp over the header
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, PROTOCOL)
    setup[0x211] = LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, LOAD_ADDRESS)  # code32_start
    struct.pack_into("<I", setup, 0x22C, INITRD_ADDR_MAX)
    struct.pack_into("<I", setup, 0x230, KERNEL_ALIGNMENT)
    setup[0x234] = 0  # not relocatable: linked at LOAD_ADDRESS
    struct.pack_into("<H", setup, 0x236, XLF_KERNEL_64)
    struct.pack_into("<I", setup, 0x238, CMDLINE_SIZE)
    struct.pack_into("<Q", setup, 0x258, LOAD_ADDRESS)  # pref_address
    struct.pack_into("<I", setup, 0x260, (init_size + 0xFFF) & ~0xFFF)
    return bytes(setup) + payload


def main() -> None:
    flat, init_size, output = sys.argv[1], int(sys.argv[2], 0), sys.argv[3]
    with open(flat, "rb") as stream:
        payload = stream.read()
    if len(payload) < 0x200 + 1:
        sys.exit(f"{flat}: payload too small to hold a 64-bit entry at 0x200")
    with open(output, "wb") as stream:
        stream.write(build(payload, max(init_size, len(payload))))


if __name__ == "__main__":
    main()
