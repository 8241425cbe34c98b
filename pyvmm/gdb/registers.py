"""The x86-64 register file gdb sees: one table, from which the target description
(``target.xml``), the ``g`` packet's layout and register numbers all come.

The features are gdb's own (``64bit-core``, ``64bit-sse``, ``64bit-segments``,
as gdb's ``features/i386/`` names them) plus one of system registers
(``k_gs_base``, ``cr0``-``cr4``, ``cr8``, ``efer``, as QEMU offers them).
A register's value is an int (x87 registers 80 bits, xmm 128); a target
gives them as a dict keyed by these names.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple


class Register(NamedTuple):
    name: str
    bits: int
    type: str
    feature: str


CORE, SSE, SEGMENTS, SYSTEM = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                               "org.gnu.gdb.i386.segments", "org.pyvmm.gdb.x86-64.system")

_GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

REGISTERS: tuple[Register, ...] = (
    *(Register(name, 64, {"rbp": "data_ptr", "rsp": "data_ptr"}.get(name, "int64"), CORE)
      for name in _GENERAL),
    Register("rip", 64, "code_ptr", CORE),
    Register("eflags", 32, "i386_eflags", CORE),
    *(Register(name, 32, "int32", CORE) for name in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Register(f"st{i}", 80, "i387_ext", CORE) for i in range(8)),
    *(Register(name, 32, "int", CORE) for name in _X87_CONTROL),
    *(Register(f"xmm{i}", 128, "vec128", SSE) for i in range(16)),
    Register("mxcsr", 32, "i386_mxcsr", SSE),
    Register("fs_base", 64, "int", SEGMENTS),
    Register("gs_base", 64, "int", SEGMENTS),
    *(Register(name, 64, "int", SYSTEM)
      for name in ("k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer")),
)
NUMBERS = {register.name: number for number, register in enumerate(REGISTERS)}
#: Bytes of the ``g`` packet's register block.
G_BYTES = sum(register.bits // 8 for register in REGISTERS)

_TYPES = {
    CORE: """  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>
""",
    SSE: """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>
""",
}
_GROUPS = {"fctrl": "float", "fstat": "float", "ftag": "float", "fiseg": "float",
           "fioff": "float", "foseg": "float", "fooff": "float", "fop": "float"}


def target_xml() -> bytes:
    """The target description gdb reads with ``qXfer:features:read:target.xml``."""
    parts = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target>\n'
             '<architecture>i386:x86-64</architecture>\n']
    for feature in (CORE, SSE, SEGMENTS, SYSTEM):
        parts.append(f'<feature name="{feature}">\n{_TYPES.get(feature, "")}')
        for register in REGISTERS:
            if register.feature == feature:
                group = _GROUPS.get(register.name)
                extra = f' group="{group}"' if group else ""
                parts.append(f'  <reg name="{register.name}" bitsize="{register.bits}" '
                             f'type="{register.type}"{extra}/>\n')
        parts.append("</feature>\n")
    parts.append("</target>\n")
    return "".join(parts).encode()


def encode_register(number: int, value: int) -> bytes:
    """One register as hex (target byte order: little-endian)."""
    size = REGISTERS[number].bits // 8
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little").hex().encode()


def encode_all(values: Mapping[str, int]) -> bytes:
    """The ``g`` reply: every register in number order."""
    return b"".join(encode_register(number, values.get(register.name, 0))
                    for number, register in enumerate(REGISTERS))


def decode_register(number: int, text: bytes) -> int:
    """A register's value from its hex; ValueError if the length or digits are wrong."""
    size = REGISTERS[number].bits // 8
    if len(text) != 2 * size:
        raise ValueError(f"{REGISTERS[number].name} takes {size} bytes")
    return int.from_bytes(bytes.fromhex(text.decode("ascii")), "little")


def decode_all(text: bytes) -> dict[str, int]:
    """Register values from a ``G`` packet's hex (all of them); ValueError if malformed."""
    if len(text) != 2 * G_BYTES:
        raise ValueError(f"a G packet carries {G_BYTES} bytes of registers")
    values, offset = {}, 0
    for number, register in enumerate(REGISTERS):
        size = 2 * (register.bits // 8)
        values[register.name] = decode_register(number, text[offset:offset + size])
        offset += size
    return values
