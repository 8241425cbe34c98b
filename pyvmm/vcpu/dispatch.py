"""Route one vCPU exit to the buses; a pure function tested with made-up exits.

``dispatch_exit`` returns ``None`` to keep running or a ``StopReason``.  It
knows nothing of KVM fds: the vCPU loop hands it an exit object and a way to
read RIP for error reports.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from pyvmm.exitstatus import StopReason
from pyvmm.kvm.exits import (INTERNAL_ERROR_DELIVERY_EV, INTERNAL_ERROR_EMULATION,
                             INTERNAL_ERROR_SIMUL_EX, INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
                             SYSTEM_EVENT_CRASH, SYSTEM_EVENT_RESET,
                             FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut,
                             MmioRead, MmioWrite, Shutdown, SystemEvent, UnknownExit, VmExit)

log = logging.getLogger(__name__)

_INTERNAL_ERRORS = {
    INTERNAL_ERROR_EMULATION: "emulation failure",
    INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
    INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason",
}


class AccessBus(Protocol):
    """What the dispatcher needs of a bus (pyvmm.devices.bus.Bus)."""

    def read(self, addr: int, data: memoryview) -> bool: ...

    def write(self, addr: int, data: memoryview) -> bool: ...


class UnknownAccessLog:
    """Logs each unhandled port or MMIO address once, at debug level."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()

    def note(self, space: str, addr: int, write: bool) -> None:
        key = (space, addr)
        if key not in self._seen:
            self._seen.add(key)
            log.debug("unhandled %s %s at %#x (reads return all-ones; logged once)",
                      space, "write" if write else "read", addr)


def dispatch_exit(exit: VmExit, pio: AccessBus, mmio: AccessBus,
                  unknown: UnknownAccessLog, read_rip: Callable[[], int],
                  pvm_host: bool = False) -> StopReason | None:
    """Serve one exit; return why to stop, or None to run on."""
    if isinstance(exit, IoOut):
        _port_access(pio, unknown, exit.port, exit.size, exit.data, write=True)
        return None
    if isinstance(exit, IoIn):
        _port_access(pio, unknown, exit.port, exit.size, exit.data, write=False)
        return None
    if isinstance(exit, MmioWrite):
        if not mmio.write(exit.addr, exit.data):
            unknown.note("mmio", exit.addr, True)
        return None
    if isinstance(exit, MmioRead):
        if not mmio.read(exit.addr, exit.data):
            unknown.note("mmio", exit.addr, False)
            exit.data[:] = b"\xff" * len(exit.data)
        return None
    if isinstance(exit, (Interrupted, Hlt)):
        return None
    if isinstance(exit, Shutdown):
        return StopReason.triple_fault()
    if isinstance(exit, SystemEvent):
        if exit.type == SYSTEM_EVENT_RESET:
            return StopReason.reboot()
        if exit.type == SYSTEM_EVENT_CRASH:
            return StopReason.guest_panic("the guest reported a crash (KVM system event)")
        return StopReason.poweroff()
    if isinstance(exit, InternalError):
        return StopReason.kvm_failure(explain_internal_error(exit, read_rip(), pvm_host))
    if isinstance(exit, FailEntry):
        return StopReason.kvm_failure(
            f"KVM could not enter the guest (hardware reason {exit.reason:#x}, "
            f"host CPU {exit.cpu})")
    if isinstance(exit, UnknownExit):
        return StopReason.kvm_failure(
            f"unexpected KVM exit reason {exit.reason} (detail {exit.detail:#x})")
    return StopReason.vmm_error(f"unhandled exit {exit!r}")


def _port_access(bus: AccessBus, unknown: UnknownAccessLog, port: int, size: int,
                 data: memoryview, write: bool) -> None:
    """One port access; ``data`` holds ``count`` elements for rep ins / outs."""
    for start in range(0, len(data), size):
        element = data[start:start + size]
        if write:
            if not bus.write(port, element):
                unknown.note("port", port, True)
        elif not bus.read(port, element):
            unknown.note("port", port, False)
            element[:] = b"\xff" * size


def describe_instruction(code: bytes) -> str | None:
    """Name the instructions software emulators commonly cannot run, if ``code`` is one."""
    body = code.lstrip(b"\xf0\xf2\xf3\x66\x67\x2e\x3e\x26\x64\x65\x36")
    prefixes = code[:len(code) - len(body)]
    while body and 0x40 <= body[0] <= 0x4F:  # REX prefixes
        body = body[1:]
    if body[:1] == b"\xcc":
        return "int3 (breakpoint; the kernel's alternatives self-test runs one)"
    if body[:1] == b"\x9b":
        return "fwait"
    if body[:2] == b"\x0f\xb8" and b"\xf3" in prefixes:
        return "popcnt (Linux: clearcpuid=popcnt)"
    if body[:3] in (b"\x0f\x01\xca", b"\x0f\x01\xcb"):
        return "clac/stac (SMAP; Linux: clearcpuid=smap)"
    if body[:2] in (b"\x0f\x05", b"\x0f\x07"):
        return "syscall/sysret"
    if body[:2] == b"\x0f\xc7" and len(body) > 2 and (body[2] >> 3) & 7 == 1:
        return "cmpxchg8b/cmpxchg16b"
    if body[:2] == b"\x0f\xae" and len(body) > 2 and body[2] < 0xC0:
        names = {4: "xsave", 5: "xrstor", 6: "xsaveopt"}
        name = names.get((body[2] >> 3) & 7)
        if name:
            return name
    if body[:3] in (b"\x0f\x01\xd0", b"\x0f\x01\xd1"):
        return "xgetbv/xsetbv"
    if body[:2] == b"\x0f\xc7" and len(body) > 2 and (body[2] >> 3) & 7 == 3:
        return "xrstors"
    return None


def explain_internal_error(exit: InternalError, rip: int, pvm_host: bool) -> str:
    """One line saying what KVM could not do, where, and the likely cause."""
    what = _INTERNAL_ERRORS.get(exit.suberror, f"internal error {exit.suberror}")
    parts = [f"KVM internal error ({what}) at RIP {rip:#x}"]
    if exit.instruction:
        parts.append(f"instruction bytes {exit.instruction.hex(' ')}")
        name = describe_instruction(exit.instruction)
        if name:
            parts.append(f"= {name}")
    line = ", ".join(parts[:2]) + (f" {parts[2]}" if len(parts) > 2 else "")
    if pvm_host and exit.suberror == INTERNAL_ERROR_EMULATION:
        line += ("; this host's KVM (kvm_pvm) emulates non-PVM guests in software "
                 "and cannot execute it: run on hardware KVM (VMX/SVM), or boot a "
                 "guest that avoids it (Linux: noxsave clearcpuid=popcnt,smap,smep)")
    elif exit.suberror == INTERNAL_ERROR_EMULATION:
        line += "; KVM's instruction emulator does not support it"
    return line
