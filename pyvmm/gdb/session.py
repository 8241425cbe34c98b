"""gdb's commands answered against a ``Target``: the protocol without sockets or KVM.

A ``Session`` is fed the bytes gdb sent (``receive``) and returns the bytes
to send back; when a running target reports a stop, ``target_stopped``
returns the stop reply.  It keeps what gdb set up: software breakpoints
(``int3`` written into guest RAM, the original bytes kept and shown to
``m`` reads, put back on ``z0`` and on detach), hardware breakpoints and
watchpoints (the debug registers, applied at each resume), the threads
``H`` chose.  Memory addresses are guest-virtual, translated page by page
through the vCPU's page tables.  A malformed command gets an ``E`` reply;
only a broken framing (``packets.ProtocolError``) ends the connection.
"""

from __future__ import annotations

import logging

from pyvmm.gdb import registers
from pyvmm.gdb.debugregs import (SLOTS, HwPoint, debug_registers,
                                 point_problem)
from pyvmm.gdb.packets import (PACKET_SIZE, Interrupt, Packet, PacketReader, ProtocolError,
                               escape, frame, unescape)
from pyvmm.gdb.target import SIGINT, SIGTRAP, Debugging, MemoryFault, Stop, Target

log = logging.getLogger(__name__)

PAGE = 4096
INT3 = 0xCC
#: Error replies: the errno values gdbserver uses.
E_FAULT, E_INVAL, E_NOSPC = b"E0e", b"E16", b"E1c"
#: Most software breakpoints at once (each keeps a byte: a client can't grow it unbounded).
MAX_BREAKPOINTS = 4096
#: Longest memory read: its hex reply must fit one packet.
MAX_READ = (PACKET_SIZE - 16) // 2
FEATURES = (b"PacketSize=%x;qXfer:features:read+;vContSupported+;QStartNoAckMode+;"
            b"swbreak+;hwbreak+" % PACKET_SIZE)


class BadPacket(Exception):
    """A command gdb (or a client posing as it) got wrong: answered with an E reply."""


def _hex(text: bytes) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise BadPacket(f"{text[:20]!r} is not a hex number") from None
    if not 0 <= value < 1 << 64:
        raise BadPacket(f"{value:#x} out of range")
    return value


def _thread(text: bytes) -> int:
    """A thread id: -1 (all), 0 (any) or a vCPU's number plus one."""
    return -1 if text == b"-1" else _hex(text)


class Session:
    """One gdb connection's protocol state, over ``target``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader = PacketReader()
        #: Guest-virtual address -> (guest-physical, the byte our int3 replaced).
        self.breakpoints: dict[int, tuple[int, int]] = {}
        self.hw_points: list[HwPoint] = []
        #: Z types the target said it can't deliver, each said once in pyvmm's log.
        self._said_unavailable: set[int] = set()
        self._g_cpu = 0
        self._c_cpu = -1
        self.running = False
        #: Ended by D or k (or the target): the server closes the connection.
        self.finished = False
        self._last_stop = Stop(0, SIGTRAP)
        self._stop_reasons = False
        #: Framed O packets (monitor output) that go out before the next reply.
        self._output = b""

    # -- events -----------------------------------------------------------------------

    def attach(self) -> None:
        """gdb connected: hold every vCPU (as QEMU does) so it finds the guest stopped."""
        self.target.stop_all()
        self._last_stop = Stop(0, SIGTRAP)

    def receive(self, data: bytes) -> bytes:
        """Bytes from gdb in, bytes for gdb out; ProtocolError when the stream is broken."""
        events, out = self.reader.feed(data)
        reply = bytearray(out)
        for event in events:
            if isinstance(event, Interrupt):
                if self.running:
                    self.target.stop_all()
                    stop = self.target.take_stop() or Stop(max(self._c_cpu, 0), SIGINT)
                    reply += self._stopped(stop)
                continue
            assert isinstance(event, Packet)
            if self.finished:
                break
            if self.running:
                log.debug("gdb sent %r while the guest runs; ignored", event.payload[:40])
                continue
            reply += self._answer(event.payload)
        return bytes(reply)

    def target_stopped(self) -> bytes:
        """The target reported a stop (or not: then nothing to say)."""
        if not self.running:
            return b""
        stop = self.target.take_stop()
        if stop is None:
            return b""
        self.target.stop_all()
        return self._stopped(stop)

    def exited(self, status: int) -> bytes:
        """The machine ended: gdb's ``W`` (the process exited with ``status``)."""
        self.finished = True
        return frame(b"W%02x" % (status & 0xFF))

    def detach(self) -> None:
        """Take every breakpoint out and let the guest run on, untraced."""
        for vaddr in list(self.breakpoints):
            self._remove_breakpoint(vaddr)
        self.hw_points.clear()
        self.running = False
        self.target.resume({cpu: "c" for cpu in range(self.target.cpus)}, None)

    # -- commands ---------------------------------------------------------------------

    def _answer(self, payload: bytes) -> bytes:
        try:
            reply = self._command(payload)
        except BadPacket as exc:
            log.debug("gdb packet %r: %s", payload[:40], exc)
            reply = E_INVAL
        except MemoryFault:
            reply = E_FAULT
        output, self._output = self._output, b""
        if reply is None:
            return output
        return output + frame(reply)

    def _command(self, payload: bytes) -> bytes | None:
        if not payload:
            return b""
        letter, rest = payload[:1], payload[1:]
        if letter == b"?":
            return self._stop_reply(self._last_stop)
        if letter in (b"q", b"Q"):
            return self._query(payload)
        if letter == b"v":
            return self._v_packet(rest)
        name = letter.decode("latin-1")
        handler = getattr(self, f"_cmd_{name}", None) if name.isalpha() else None
        if handler is not None:
            return handler(rest)
        return b""

    def _cmd_g(self, rest: bytes) -> bytes:
        return registers.encode_all(self.target.registers(self._g_cpu))

    def _cmd_G(self, rest: bytes) -> bytes:
        try:
            values = registers.decode_all(rest)
        except ValueError as exc:
            raise BadPacket(str(exc)) from None
        current = self.target.registers(self._g_cpu)
        changed = {name: value for name, value in values.items() if current.get(name) != value}
        return self._set_registers(changed)

    def _cmd_p(self, rest: bytes) -> bytes:
        number = _hex(rest)
        if number >= len(registers.REGISTERS):
            raise BadPacket(f"no register {number}")
        name = registers.REGISTERS[number].name
        return registers.encode_register(number, self.target.registers(self._g_cpu)[name])

    def _cmd_P(self, rest: bytes) -> bytes:
        number_text, _, value_text = rest.partition(b"=")
        number = _hex(number_text)
        if number >= len(registers.REGISTERS):
            raise BadPacket(f"no register {number}")
        try:
            value = registers.decode_register(number, value_text)
        except ValueError as exc:
            raise BadPacket(str(exc)) from None
        return self._set_registers({registers.REGISTERS[number].name: value})

    def _set_registers(self, values: dict[str, int]) -> bytes:
        if not values:
            return b"OK"
        try:
            self.target.set_registers(self._g_cpu, values)
        except ValueError as exc:
            log.debug("gdb register write refused: %s", exc)
            return E_INVAL
        return b"OK"

    def _cmd_m(self, rest: bytes) -> bytes:
        address, length = self._address_length(rest)
        data = self.read_virtual(address, min(length, MAX_READ))
        if not data and length:
            return E_FAULT
        return data.hex().encode()

    def _cmd_M(self, rest: bytes) -> bytes:
        head, _, text = rest.partition(b":")
        address, length = self._address_length(head)
        try:
            data = bytes.fromhex(text.decode("ascii"))
        except ValueError:
            raise BadPacket("M data is not hex") from None
        if len(data) != length:
            raise BadPacket("M length and data disagree")
        self.write_virtual(address, data)
        return b"OK"

    def _cmd_X(self, rest: bytes) -> bytes:
        head, _, binary = rest.partition(b":")
        address, length = self._address_length(head)
        try:
            data = unescape(binary)
        except ProtocolError:
            raise BadPacket("X data ends in an escape") from None
        if len(data) != length:
            raise BadPacket("X length and data disagree")
        if data:
            self.write_virtual(address, data)
        return b"OK"

    def _address_length(self, text: bytes) -> tuple[int, int]:
        address, comma, length = text.partition(b",")
        if not comma:
            raise BadPacket("expected ADDR,LENGTH")
        return _hex(address), _hex(length)

    def _cmd_H(self, rest: bytes) -> bytes:
        op, tid = rest[:1], _thread(rest[1:])
        if tid > self.target.cpus:
            return E_INVAL
        if op == b"g":
            if tid > 0:
                self._g_cpu = tid - 1
        elif op == b"c":
            self._c_cpu = tid - 1 if tid > 0 else -1
        else:
            raise BadPacket(f"H{op!r}")
        return b"OK"

    def _cmd_T(self, rest: bytes) -> bytes:
        tid = _thread(rest)
        return b"OK" if 1 <= tid <= self.target.cpus else E_INVAL

    def _cmd_c(self, rest: bytes) -> bytes | None:
        if rest:
            self._set_rip(max(self._c_cpu, 0), _hex(rest))
        self._resume({cpu: "c" for cpu in range(self.target.cpus)})
        return None

    def _cmd_s(self, rest: bytes) -> bytes | None:
        cpu = self._c_cpu if self._c_cpu >= 0 else self._g_cpu
        if rest:
            self._set_rip(cpu, _hex(rest))
        self._resume({cpu: "s"})
        return None

    def _set_rip(self, cpu: int, address: int) -> None:
        self.target.set_registers(cpu, {"rip": address})

    def _cmd_Z(self, rest: bytes) -> bytes:
        return self._point(rest, insert=True)

    def _cmd_z(self, rest: bytes) -> bytes:
        return self._point(rest, insert=False)

    def _cmd_D(self, rest: bytes) -> bytes:
        self.detach()
        self.finished = True
        return b"OK"

    def _cmd_k(self, rest: bytes) -> None:
        self.finished = True
        self.target.kill()
        return None

    # -- breakpoints --------------------------------------------------------------------

    def _point(self, rest: bytes, insert: bool) -> bytes:
        fields = rest.split(b";")[0].split(b",")
        if len(fields) != 3:
            raise BadPacket("expected TYPE,ADDR,KIND")
        kind, address, length = _hex(fields[0]), _hex(fields[1]), _hex(fields[2])
        if kind == 0:
            if insert:
                return self._insert_breakpoint(address)
            self._remove_breakpoint(address)
            return b"OK"
        point = HwPoint(kind, address, length)
        problem = point_problem(point)
        if problem:
            if kind > 4:
                return b""  # not a type we know: "unsupported"
            log.debug("gdb hardware point refused: %s", problem)
            return E_INVAL
        unavailable = self.target.point_unavailable(kind) if insert else None
        if unavailable:
            # An error, not "unsupported": for that gdb would single-step the guest
            # to emulate the watchpoint, which looks like a hang.
            if kind not in self._said_unavailable:
                self._said_unavailable.add(kind)
                log.warning("gdb: %s", unavailable)
            return E_INVAL
        if insert:
            if point not in self.hw_points:
                if len(self.hw_points) >= SLOTS:
                    return E_NOSPC
                self.hw_points.append(point)
        elif point in self.hw_points:
            self.hw_points.remove(point)
        return b"OK"

    def _insert_breakpoint(self, vaddr: int) -> bytes:
        if vaddr in self.breakpoints:
            return b"OK"
        if len(self.breakpoints) >= MAX_BREAKPOINTS:
            return E_NOSPC
        paddr = self.target.translate(self._g_cpu, vaddr)
        original = self.target.read_physical(paddr, 1)[0]
        self.target.write_physical(paddr, bytes((INT3,)))
        self.breakpoints[vaddr] = (paddr, original)
        return b"OK"

    def _remove_breakpoint(self, vaddr: int) -> None:
        placed = self.breakpoints.pop(vaddr, None)
        if placed is not None:
            paddr, original = placed
            try:
                self.target.write_physical(paddr, bytes((original,)))
            except MemoryFault:
                log.warning("could not restore the byte under gdb's breakpoint at %#x", vaddr)

    def debugging(self) -> Debugging:
        return Debugging(frozenset(self.breakpoints), debug_registers(self.hw_points),
                         tuple(point.type for point in self.hw_points))

    # -- memory ---------------------------------------------------------------------------

    def read_virtual(self, vaddr: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``vaddr``, stopping at the first unmapped page;
        our int3s read as the bytes they replaced."""
        out = bytearray()
        while len(out) < length:
            address = (vaddr + len(out)) & ((1 << 64) - 1)
            chunk = min(length - len(out), PAGE - address % PAGE)
            try:
                out += self.target.read_physical(
                    self.target.translate(self._g_cpu, address), chunk)
            except MemoryFault:
                break
        for bp, (_paddr, original) in self.breakpoints.items():
            if vaddr <= bp < vaddr + len(out):
                out[bp - vaddr] = original
        return bytes(out)

    def write_virtual(self, vaddr: int, data: bytes) -> None:
        """Write ``data`` at ``vaddr`` (MemoryFault if any page is unmapped: then
        nothing is written); bytes under our int3s change what they restore."""
        pieces = []
        offset = 0
        while offset < len(data):
            address = (vaddr + offset) & ((1 << 64) - 1)
            chunk = min(len(data) - offset, PAGE - address % PAGE)
            pieces.append((self.target.translate(self._g_cpu, address),
                           data[offset:offset + chunk]))
            offset += chunk
        patched = bytearray(data)
        for bp, (paddr, _original) in self.breakpoints.items():
            if vaddr <= bp < vaddr + len(data):
                self.breakpoints[bp] = (paddr, data[bp - vaddr])
                patched[bp - vaddr] = INT3
        offset = 0
        for paddr, piece in pieces:
            self.target.write_physical(paddr, bytes(patched[offset:offset + len(piece)]))
            offset += len(piece)

    # -- running --------------------------------------------------------------------------

    def _resume(self, actions: dict[int, str]) -> None:
        self.running = True
        self.target.resume(actions, self.debugging())

    def _stopped(self, stop: Stop) -> bytes:
        self.running = False
        self._last_stop = stop
        self._g_cpu = stop.cpu
        return frame(self._stop_reply(stop))

    def _stop_reply(self, stop: Stop) -> bytes:
        reply = b"T%02xthread:%x;" % (stop.signal, stop.cpu + 1)
        if stop.reason in ("swbreak", "hwbreak"):
            if self._stop_reasons:
                reply += stop.reason.encode() + b":;"
        elif stop.reason:
            reply += b"%s:%x;" % (stop.reason.encode(), stop.address)
        return reply

    def _v_packet(self, rest: bytes) -> bytes | None:
        if rest == b"Cont?":
            return b"vCont;c;C;s;S"
        if rest.startswith(b"Cont;"):
            return self._vcont(rest[5:])
        if rest.startswith(b"Kill"):
            self._cmd_k(b"")
            return b"OK"
        if rest == b"MustReplyEmpty":
            return b""
        return b""

    def _vcont(self, text: bytes) -> bytes | None:
        actions: dict[int, str] = {}
        for item in text.split(b";"):
            action, _, tid_text = item.partition(b":")
            if not action or action[:1] not in b"cCsS":
                raise BadPacket(f"vCont action {action!r}")
            letter = action[:1].lower().decode()
            cpus = range(self.target.cpus)
            if tid_text:
                tid = _thread(tid_text)
                if tid > 0:
                    if tid > self.target.cpus:
                        raise BadPacket(f"no thread {tid}")
                    cpus = range(tid - 1, tid)
            for cpu in cpus:
                actions.setdefault(cpu, letter)  # the leftmost action for a thread wins
        stepping = {cpu: "s" for cpu, action in actions.items() if action == "s"}
        self._resume(stepping or actions)
        return None

    def _query(self, payload: bytes) -> bytes:
        name, _, args = payload.partition(b":")
        if name == b"qSupported":
            offered = args.split(b";")
            self._stop_reasons = b"swbreak+" in offered
            return FEATURES
        if name == b"QStartNoAckMode":
            self.reader.no_ack = True  # from gdb's next packet (it acks this reply)
            return b"OK"
        if name == b"qXfer" and args.startswith(b"features:read:"):
            return self._xfer_features(args[len(b"features:read:"):])
        if payload == b"qAttached" or name == b"qAttached":
            return b"1"
        if payload == b"qC":
            return b"QC%x" % (self._g_cpu + 1)
        if payload == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (cpu + 1) for cpu in range(self.target.cpus))
        if payload == b"qsThreadInfo":
            return b"l"
        if payload.startswith(b"qThreadExtraInfo,"):
            tid = _thread(payload.split(b",", 1)[1])
            if not 1 <= tid <= self.target.cpus:
                return E_INVAL
            return self.target.describe(tid - 1).encode().hex().encode()
        if payload.startswith(b"qRcmd,"):
            return self._monitor(payload[6:])
        if payload == b"qSymbol::":
            return b"OK"
        return b""

    def _xfer_features(self, args: bytes) -> bytes:
        annex, _, span = args.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        offset, length = self._address_length(span)
        xml = registers.target_xml()
        piece = xml[offset:offset + min(length, MAX_READ)]
        more = offset + len(piece) < len(xml)
        return (b"m" if more else b"l") + escape(piece)

    def _monitor(self, hex_command: bytes) -> bytes:
        try:
            command = bytes.fromhex(hex_command.decode("ascii")).decode("utf-8", "replace")
        except ValueError:
            raise BadPacket("qRcmd is not hex") from None
        words = command.split()
        if words[:2] == ["info", "registers"]:
            text = format_registers(self.target.registers(self._g_cpu), self._g_cpu)
        elif words[:1] == ["help"] or not words:
            text = MONITOR_HELP
        else:
            try:
                text = self.target.monitor(command)
            except ValueError as exc:
                text = f"{exc}\n{MONITOR_HELP}"
        self._output = console_output(text)  # O packets, before the final OK
        return b"OK"


MONITOR_HELP = ("pyvmm monitor commands:\n"
                "  info registers   the current vCPU's registers\n"
                "  dump FILE        write an ELF core of the guest (pyvmm inspect reads it)\n")


def console_output(text: str) -> bytes:
    """``text`` as framed ``O`` packets (gdb prints them: monitor output)."""
    data = text.encode()
    step = MAX_READ - 1
    return b"".join(frame(b"O" + data[start:start + step].hex().encode())
                    for start in range(0, len(data), step))


def format_registers(values: dict[str, int], cpu: int) -> str:
    """``monitor info registers``: the vCPU's state as QEMU's monitor prints it."""
    lines = [f"vCPU {cpu}"]
    general = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
    for row in range(0, len(general), 4):
        lines.append(" ".join(f"{name.upper():>3}={values.get(name, 0):016x}"
                              for name in general[row:row + 4]))
    lines.append(f"RIP={values.get('rip', 0):016x} RFL={values.get('eflags', 0):08x}")
    lines.append(" ".join(f"{name.upper()}={values.get(name, 0):04x}"
                          for name in ("cs", "ss", "ds", "es", "fs", "gs")))
    lines.append(f"FS_BASE={values.get('fs_base', 0):016x} "
                 f"GS_BASE={values.get('gs_base', 0):016x} "
                 f"KERNEL_GS_BASE={values.get('k_gs_base', 0):016x}")
    lines.append(" ".join(f"{name.upper()}={values.get(name, 0):016x}"
                          for name in ("cr0", "cr2", "cr3", "cr4")))
    lines.append(f"CR8={values.get('cr8', 0):016x} EFER={values.get('efer', 0):016x}")
    return "\n".join(lines) + "\n"
