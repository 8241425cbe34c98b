"""The exit dispatcher, driven with made-up exits and a recording bus."""

from __future__ import annotations

import pytest

from pyvmm.vcpu.dispatch import (UnknownAccessLog, describe_instruction, dispatch_exit,
                            explain_internal_error)
from pyvmm.exitstatus import ExitStatus
from pyvmm.kvm.exits import (FailEntry, InternalError, Interrupted, IoIn, IoOut, MmioRead,
                             MmioWrite, Shutdown, SystemEvent, UnknownExit)


class RecordingBus:
    def __init__(self, handled: set[int]) -> None:
        self.handled = handled
        self.calls: list[tuple[str, int, bytes]] = []

    def read(self, addr: int, data: memoryview) -> bool:
        if addr not in self.handled:
            return False
        data[:] = bytes([0x42]) * len(data)
        self.calls.append(("r", addr, bytes(data)))
        return True

    def write(self, addr: int, data: memoryview) -> bool:
        if addr not in self.handled:
            return False
        self.calls.append(("w", addr, bytes(data)))
        return True


def dispatch(exit, pio=None, mmio=None, pvm=False):
    return dispatch_exit(exit, pio or RecordingBus(set()), mmio or RecordingBus(set()),
                         UnknownAccessLog(), lambda: 0xFFFFFFFF81000000, pvm)


def test_port_write_reaches_the_bus() -> None:
    bus = RecordingBus({0x3F8})
    assert dispatch(IoOut(0x3F8, 1, memoryview(bytearray(b"A"))), pio=bus) is None
    assert bus.calls == [("w", 0x3F8, b"A")]


def test_rep_outs_is_split_into_elements() -> None:
    bus = RecordingBus({0x3F8})
    dispatch(IoOut(0x3F8, 2, memoryview(bytearray(b"abcdef"))), pio=bus)
    assert [c[2] for c in bus.calls] == [b"ab", b"cd", b"ef"]


def test_unknown_port_reads_all_ones() -> None:
    data = bytearray(4)
    assert dispatch(IoIn(0x1234, 4, memoryview(data))) is None
    assert data == b"\xff\xff\xff\xff"


def test_port_read_is_filled_by_the_device() -> None:
    data = bytearray(1)
    dispatch(IoIn(0x60, 1, memoryview(data)), pio=RecordingBus({0x60}))
    assert data == b"\x42"


def test_mmio_paths() -> None:
    bus = RecordingBus({0xD0000000})
    data = bytearray(4)
    dispatch(MmioRead(0xD0000000, memoryview(data)), mmio=bus)
    dispatch(MmioWrite(0xD0000000, memoryview(bytearray(b"\x01\x02"))), mmio=bus)
    assert data == b"\x42" * 4
    assert bus.calls[-1] == ("w", 0xD0000000, b"\x01\x02")
    missing = bytearray(2)
    dispatch(MmioRead(0x1000, memoryview(missing)))
    assert missing == b"\xff\xff"


def test_unknown_access_logged_once(caplog) -> None:
    log = UnknownAccessLog()
    caplog.set_level("DEBUG", logger="pyvmm.vcpu.dispatch")
    for _ in range(3):
        dispatch_exit(IoOut(0x99, 1, memoryview(bytearray(1))), RecordingBus(set()),
                      RecordingBus(set()), log, lambda: 0)
    assert sum("0x99" in r.message for r in caplog.records) == 1


def test_stop_reasons() -> None:
    assert dispatch(Interrupted()) is None
    assert dispatch(Shutdown()).status == ExitStatus.GUEST_CRASHED
    assert dispatch(SystemEvent(1, 0)).status == ExitStatus.OK
    assert dispatch(SystemEvent(2, 0)).kind == "reboot"
    assert dispatch(SystemEvent(3, 0)).status == ExitStatus.GUEST_PANIC
    assert dispatch(FailEntry(0x80000021, 1)).status == ExitStatus.KVM_FAILURE
    assert dispatch(UnknownExit(99, 0)).status == ExitStatus.KVM_FAILURE


def test_emulation_failure_is_explained() -> None:
    exit = InternalError(1, (0,), bytes.fromhex("f0480fc70e"))
    reason = dispatch(exit, pvm=True)
    assert reason.status == ExitStatus.KVM_FAILURE
    assert "0xffffffff81000000" in reason.message
    assert "f0 48 0f c7 0e" in reason.message
    assert "cmpxchg16b" in reason.message
    assert "kvm_pvm" in reason.message
    assert "\n" not in reason.message


def test_instruction_names() -> None:
    assert (describe_instruction(b"\xcc") or "").startswith("int3")
    assert describe_instruction(bytes.fromhex("0fae2f")) == "xrstor"  # xrstor [rdi]
    assert describe_instruction(bytes.fromhex("480fae27")) == "xsave"
    assert describe_instruction(bytes.fromhex("0f01d1")) == "xgetbv/xsetbv"
    assert describe_instruction(bytes.fromhex("90")) is None


def test_internal_error_without_bytes() -> None:
    message = explain_internal_error(InternalError(3, (1, 2), None), 0x1000, False)
    assert message.startswith("KVM internal error (event delivery failed) at RIP 0x1000")


@pytest.mark.parametrize("code, name", [
    ("f3480fb8c7", "popcnt"),       # popcnt rax, rdi (f3 is part of the opcode)
    ("0f01ca", "clac/stac"),
    ("9b65488b", "fwait"),
    ("0f05", "syscall/sysret"),
    ("480fb8c7", None),             # no f3: not popcnt
])
def test_more_instructions_emulators_lack(code: str, name: str | None) -> None:
    described = describe_instruction(bytes.fromhex(code))
    assert (described or "").startswith(name or "") and (described is None) == (name is None)
