"""bzImage header parsing and loading on crafted images."""

from __future__ import annotations

import pytest

from pyvmm.errors import LoaderError
from pyvmm.loader.bzimage import load_bzimage, parse_setup_header
from pyvmm.memory import GuestMemory

#: Where a PC's high memory starts: the lowest address a kernel may be loaded at.
HIMEM_START = 1 << 20
from tests.unit.bzimages import make_bzimage


def test_valid_header() -> None:
    header = parse_setup_header(make_bzimage())
    assert header.version == 0x020F and header.setup_sects == 1
    assert header.cmdline_size == 2047 and header.pref_address == 0x1000000
    assert header.raw[:1] == b"\x01" and header.raw[0x202 - 0x1F1:][:4] == b"HdrS"
    assert len(header.raw) == 0x268 - 0x1F1


def test_loads_payload_at_pref_address() -> None:
    memory = GuestMemory.from_bytes(64 << 20)
    payload = bytes(range(256)) * 4
    kernel = load_bzimage(memory, make_bzimage(payload), HIMEM_START)
    assert kernel.load_address == 0x1000000
    assert kernel.entry_address == 0x1000200
    assert kernel.end_address == 0x1000000 + 0x10000
    assert memory.read(0x1000000, len(payload)) == payload


def test_setup_sects_zero_means_four() -> None:
    image = bytearray(make_bzimage(setup_sects=4))
    image[0x1F1] = 0
    assert parse_setup_header(bytes(image)).setup_size == 5 * 512


@pytest.mark.parametrize("image,message", [
    (b"", "empty"),
    (make_bzimage()[:0x100], "truncated"),
    (make_bzimage()[:1024], "truncated"),
    (b"\x7fELF" + bytes(4096), "not a bzImage"),
    (make_bzimage(version=0x020A), "boot protocol 2.10; pyvmm needs 2.12"),
    (make_bzimage(xloadflags=0), "no 64-bit entry"),
])
def test_bad_images(image: bytes, message: str) -> None:
    with pytest.raises(LoaderError, match=message):
        load_bzimage(GuestMemory.from_bytes(64 << 20), image, HIMEM_START)


def test_memory_too_small_for_kernel() -> None:
    image = make_bzimage(init_size=40 << 20, pref_address=0x1000000, relocatable=0)
    with pytest.raises(LoaderError, match="--memory"):
        load_bzimage(GuestMemory.from_bytes(32 << 20), image, HIMEM_START)


def test_relocatable_kernel_moves_down_when_pref_address_does_not_fit() -> None:
    memory = GuestMemory.from_bytes(20 << 20)
    kernel = load_bzimage(memory, make_bzimage(init_size=8 << 20, pref_address=0x1000000),
                          HIMEM_START)
    assert kernel.load_address == 0x200000  # 1 MiB rounded up to kernel_alignment
