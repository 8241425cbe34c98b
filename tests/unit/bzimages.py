"""Crafted bzImages for loader tests."""

from __future__ import annotations

import struct


def make_bzimage(payload: bytes = b"\x90" * 0x400, *, version: int = 0x020F,
                 xloadflags: int = 1, setup_sects: int = 1, init_size: int = 0x10000,
                 pref_address: int = 0x1000000, cmdline_size: int = 2047,
                 initrd_addr_max: int = 0x7FFFFFFF, relocatable: int = 1) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x66"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 1
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload
