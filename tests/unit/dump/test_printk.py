"""The printk ring reader over a synthetic ring laid out as Linux 6.1 lays it out."""

from __future__ import annotations

import struct

import pytest

from pyvmm.dump import DumpError
from pyvmm.dump.printk import RingLayout, read_log
from pyvmm.memory import GuestMemory

PRB, RING, DESCS, INFOS, DATA = 0x1000, 0x2000, 0x3000, 0x4000, 0x8000
COUNT_BITS, SIZE_BITS = 2, 8           # 4 descriptors, 256 bytes of text


def build(messages: list[tuple[int, str]], first_id: int = 0):
    """Records id first_id.. as the kernel writes them; returns memory."""
    memory = GuestMemory.from_bytes(1 << 16)
    count, size = 1 << COUNT_BITS, 1 << SIZE_BITS
    lpos = first_id * 48
    for n, (level, text) in enumerate(messages):
        ident = first_id + n
        index = ident % count
        raw = text.encode()
        block = 8 + len(raw)
        block += -block % 8
        # The kernel's get_next_lpos(): a block that would cross the end of the
        # ring goes to the start of the next wrap.
        next_lpos = lpos + block
        start = lpos % size
        if lpos // size != (next_lpos - 1) // size:
            next_lpos = (next_lpos // size) * size + block
            start = 0
        memory.write(DATA + start, struct.pack("<Q", ident) + raw)
        state = (2 << 62) | ident
        memory.write(DESCS + index * 24, struct.pack("<QQQ", state, lpos, next_lpos))
        info = bytearray(88)
        struct.pack_into("<QQHBB", info, 0, 100 + ident, 1_500_000 * (ident + 1), len(raw),
                         0, level << 5)
        memory.write(INFOS + index * 88, bytes(info))
        lpos = next_lpos
    head = first_id + len(messages) - 1
    tail = max(first_id, head - (count - 1))
    memory.write(RING, struct.pack("<I4xQQQQ8x", COUNT_BITS, DESCS, INFOS, head, tail))
    memory.write(RING + 48, struct.pack("<I4xQ", SIZE_BITS, DATA))
    memory.write_u64(PRB, RING)
    return memory


def reader(memory):
    return lambda address, length: memory.read(address, length)


def test_records_in_order_with_level_and_time() -> None:
    memory = build([(6, "Linux version 6.1"), (4, "a warning"), (6, "third")])
    records = read_log(reader(memory), PRB)
    assert [(r.seq, r.level, r.text) for r in records] == \
        [(100, 6, "Linux version 6.1"), (101, 4, "a warning"), (102, 6, "third")]
    assert records[1].line() == "[    0.003000] a warning"


def test_wrapped_text_block() -> None:
    memory = build([(6, "x" * 100), (6, "y" * 100), (6, "wraps to the start")])
    texts = [r.text for r in read_log(reader(memory), PRB)]
    assert texts == ["x" * 100, "y" * 100, "wraps to the start"]


def test_only_the_live_window_of_descriptors() -> None:
    memory = build([(6, f"m{i}") for i in range(4)], first_id=4)
    assert [r.text for r in read_log(reader(memory), PRB)] == ["m0", "m1", "m2", "m3"]


def test_garbage_is_reported() -> None:
    memory = GuestMemory.from_bytes(1 << 16)
    memory.write_u64(PRB, RING)
    with pytest.raises(DumpError, match="looks wrong"):
        read_log(reader(memory), PRB, RingLayout())
