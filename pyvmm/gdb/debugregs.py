"""x86 debug registers for gdb's hardware breakpoints and watchpoints (Z1-Z4).

DR0-DR3 hold addresses; DR7 enables each (L0-L3) with a condition (execute,
write, read-or-write: x86 has no read-only watch, so ``rwatch`` is an access
watch, as in QEMU) and a length; DR6 says which fired (B0-B3) or that a
single step ended (BS).  Intel SDM vol. 3, 18.2.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

SLOTS = 4
#: gdb's Z packet types.
Z_HW_BREAK, Z_WATCH_WRITE, Z_WATCH_READ, Z_WATCH_ACCESS = 1, 2, 3, 4
#: DR7 R/W field per Z type.
_CONDITION = {Z_HW_BREAK: 0b00, Z_WATCH_WRITE: 0b01, Z_WATCH_READ: 0b11, Z_WATCH_ACCESS: 0b11}
#: DR7 LEN field per length in bytes.
_LENGTH = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
#: GE and LE (exact breakpoints, as QEMU sets them).
DR7_EXACT = 0x300
DR6_SINGLE_STEP = 1 << 14
#: What a stop reply calls a hit of each Z type.
STOP_REASON = {Z_HW_BREAK: "hwbreak", Z_WATCH_WRITE: "watch", Z_WATCH_READ: "rwatch",
               Z_WATCH_ACCESS: "awatch"}


class HwPoint(NamedTuple):
    type: int
    address: int
    length: int


def point_problem(point: HwPoint) -> str | None:
    """Why the debug registers can't hold ``point``, or None."""
    if point.type not in _CONDITION:
        return f"no such hardware point type {point.type}"
    if point.type == Z_HW_BREAK:
        if point.length != 1:
            return "an instruction breakpoint has length 1"
    elif point.length not in _LENGTH:
        return "a watchpoint covers 1, 2, 4 or 8 bytes"
    if point.address % point.length:
        return f"a {point.length}-byte watchpoint must be aligned"
    if not 0 <= point.address < 1 << 64:
        return "address out of range"
    return None


def debug_registers(points: Sequence[HwPoint]) -> tuple[int, ...]:
    """DR0-DR7 (DR4/DR5 unused, DR6 zero) for up to four points."""
    if len(points) > SLOTS:
        raise ValueError(f"at most {SLOTS} hardware points")
    regs = [0] * 8
    dr7 = DR7_EXACT if points else 0
    for slot, point in enumerate(points):
        regs[slot] = point.address
        dr7 |= (1 << (2 * slot)) | (_CONDITION[point.type] << (16 + 4 * slot)) \
            | (_LENGTH[point.length] << (18 + 4 * slot))
    regs[7] = dr7
    return tuple(regs)


def slots_hit(dr6: int) -> list[int]:
    """The debug-register slots whose condition DR6 reports met."""
    return [slot for slot in range(SLOTS) if dr6 & (1 << slot)]
