"""The kernel log from a dump: Linux's lockless printk ring buffer (5.10 and later).

``prb`` (a pointer) leads to a ``struct printk_ringbuffer``: a descriptor
ring (state word + text block positions per record, and a parallel array of
``struct printk_info`` with seq, timestamp, level, text length) and a text
data ring.  The offsets below are those of x86-64 Linux 6.1 (kernel/printk/
printk_ringbuffer.h); ``RingLayout`` holds them so another version can
supply its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from pyvmm.dump import DumpError

DESC_STATE_SHIFT = 62
DESC_ID_MASK = (1 << DESC_STATE_SHIFT) - 1
DESC_COMMITTED = 1
DESC_FINALIZED = 2


@dataclass(frozen=True)
class RingLayout:
    """Offsets in struct printk_ringbuffer and friends."""

    desc_count_bits: int = 0       # prb_desc_ring.count_bits (unsigned int)
    desc_descs: int = 8            # prb_desc_ring.descs
    desc_infos: int = 16           # prb_desc_ring.infos
    desc_head_id: int = 24
    desc_tail_id: int = 32
    text_ring: int = 48            # printk_ringbuffer.text_data_ring
    text_size_bits: int = 0        # prb_data_ring.size_bits
    text_data: int = 8             # prb_data_ring.data
    desc_size: int = 24            # struct prb_desc: state_var, begin, next
    info_size: int = 88            # struct printk_info
    info_seq: int = 0
    info_ts_nsec: int = 8
    info_text_len: int = 16
    info_flags_level: int = 19     # u8 flags:5, level:3


@dataclass(frozen=True)
class LogRecord:
    seq: int
    ts_nsec: int
    level: int
    text: str

    def line(self) -> str:
        seconds, nanos = divmod(self.ts_nsec, 1_000_000_000)
        return f"[{seconds:5d}.{nanos // 1000:06d}] {self.text}"


def read_log(read_virt: Callable[[int, int], bytes], prb_pointer: int,
             layout: RingLayout = RingLayout(), limit: int = 1 << 16) -> list[LogRecord]:
    """The finalized records of the ring whose pointer variable is at ``prb_pointer``."""
    u64 = lambda a: struct.unpack("<Q", read_virt(a, 8))[0]  # noqa: E731
    u32 = lambda a: struct.unpack("<I", read_virt(a, 4))[0]  # noqa: E731
    ring = u64(prb_pointer)
    count_bits = u32(ring + layout.desc_count_bits)
    if not 0 < count_bits < 32:
        raise DumpError(f"printk ring at {ring:#x} looks wrong (count_bits {count_bits}); "
                        "is this the kernel the dump came from?")
    descs, infos = u64(ring + layout.desc_descs), u64(ring + layout.desc_infos)
    head, tail = u64(ring + layout.desc_head_id), u64(ring + layout.desc_tail_id)
    text = ring + layout.text_ring
    size_bits = u32(text + layout.text_size_bits)
    data = u64(text + layout.text_data)
    count, size = 1 << count_bits, 1 << size_bits
    records = []
    ident = tail & DESC_ID_MASK
    head &= DESC_ID_MASK
    for _ in range(min(count, limit)):
        index = ident % count
        state_var, begin, next_lpos = struct.unpack(
            "<QQQ", read_virt(descs + index * layout.desc_size, 24))
        state = state_var >> DESC_STATE_SHIFT
        if (state_var & DESC_ID_MASK) == ident and state in (DESC_COMMITTED, DESC_FINALIZED):
            info = read_virt(infos + index * layout.info_size, layout.info_size)
            seq, ts = struct.unpack_from("<QQ", info, layout.info_seq)
            text_len = struct.unpack_from("<H", info, layout.info_text_len)[0]
            level = info[layout.info_flags_level] >> 5
            body = _text(read_virt, data, size_bits, size, begin, next_lpos, text_len)
            records.append(LogRecord(seq, ts, level, body.decode("utf-8", "replace")))
        if ident == head:
            break
        ident = (ident + 1) & DESC_ID_MASK
    records.sort(key=lambda r: r.seq)
    return records


def _text(read_virt, data: int, size_bits: int, size: int, begin: int, next_lpos: int,
          text_len: int) -> bytes:
    """A record's text, as the kernel's get_data() finds it.

    A data block is an id word then the text; one that would run past the end
    of the ring is stored at its beginning instead ("wrapped").
    """
    if begin == next_lpos or begin & 1 or next_lpos & 1:  # data-less records
        return b""
    if begin >> size_bits == (next_lpos - 1) >> size_bits and begin < next_lpos:
        block, available = begin % size, next_lpos - begin
    elif (begin + size) >> size_bits == next_lpos >> size_bits:
        block, available = 0, next_lpos % size
    else:
        return b""
    length = max(0, min(text_len, available - 8))
    return read_virt(data + block + 8, length) if length else b""
