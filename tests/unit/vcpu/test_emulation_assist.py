"""Which failed instructions pyvmm finishes for a software-emulating KVM, and how."""

from __future__ import annotations

from pyvmm.vcpu.emulation_assist import plan_assist
from pyvmm.kvm.exits import InternalError


def failure(code: bytes | None) -> InternalError:
    return InternalError(1, (), code)


def test_int3_becomes_a_breakpoint_trap_after_the_instruction() -> None:
    assist = plan_assist(failure(bytes.fromhex("cc90909090")))
    assert assist is not None and (assist.length, assist.vector) == (1, 3)


def test_fwait_is_skipped() -> None:
    assist = plan_assist(failure(bytes.fromhex("9b65488b")))
    assert assist is not None and (assist.length, assist.vector) == (1, None)


def test_everything_else_still_fails() -> None:
    for code in (bytes.fromhex("f3480fb8c7"),   # popcnt
                 bytes.fromhex("0f01ca"),       # clac
                 bytes.fromhex("f0480fc70e"),   # lock cmpxchg16b
                 b"", None):
        assert plan_assist(failure(code)) is None


def test_only_emulation_failures_are_assisted() -> None:
    assert plan_assist(InternalError(3, (), b"\xcc")) is None  # event delivery failure
