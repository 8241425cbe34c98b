"""Every gdb command the stub answers, against a fake target, with hand-computed replies."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET

import pytest

from pyvmm.gdb.packets import Packet, PacketReader, ProtocolError, frame
from pyvmm.gdb.registers import G_BYTES, NUMBERS, REGISTERS, target_xml
from pyvmm.gdb.session import Session
from pyvmm.gdb.target import SIGINT, Stop

from tests.unit.gdb.gdb_fake import FakeTarget


def replies(out: bytes) -> list[bytes]:
    """The payloads in the stub's output (checksums checked), acks dropped."""
    reader = PacketReader()
    reader.no_ack = True
    events, _ = reader.feed(out)
    assert all(isinstance(e, Packet) for e in events)
    return [e.payload for e in events if isinstance(e, Packet)]


def ask(session: Session, payload: bytes) -> list[bytes]:
    out = session.receive(frame(payload, rle=False))
    assert session.reader.no_ack or out.startswith(b"+")
    return replies(out)


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def session(target: FakeTarget) -> Session:
    s = Session(target)
    s.attach()
    return s


def test_attach_stops_every_vcpu(target: FakeTarget, session: Session) -> None:
    assert target.stop_alls == 1
    assert ask(session, b"?") == [b"T05thread:1;"]


def test_qsupported_names_what_the_stub_does(session: Session) -> None:
    assert ask(session, b"qSupported:multiprocess+;swbreak+;hwbreak+") == [
        b"PacketSize=4000;qXfer:features:read+;vContSupported+;QStartNoAckMode+;"
        b"swbreak+;hwbreak+"]


def test_no_ack_mode(session: Session) -> None:
    out = session.receive(b"$QStartNoAckMode#b0")
    assert out == b"+$OK#9a"  # the request itself is still acked
    assert session.receive(b"+$?#3f") == frame(b"T05thread:1;")  # no '+' any more


def test_unknown_packets_get_the_empty_reply(session: Session) -> None:
    assert session.receive(b"$vMustReplyEmpty#3a") == b"+$#00"
    assert ask(session, b"qTStatus") == [b""]
    assert ask(session, b"!") == [b""]


def test_g_is_every_register_little_endian(target: FakeTarget, session: Session) -> None:
    target.regs[0].update(rax=0x1122334455667788, rip=0xFFFFFFFF81000000, eflags=0x246,
                          cs=0x10, cr3=0x1000)
    [reply] = ask(session, b"g")
    # 16 general, rip, eflags, 6 segments, 8 x87 (10 bytes), 8 x87 control, 16 xmm, mxcsr,
    # fs_base, gs_base, 7 system registers.
    assert G_BYTES == 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 2 * 8 + 7 * 8
    assert len(reply) == 2 * G_BYTES
    assert reply.startswith(b"8877665544332211")
    assert reply[16 * 16:16 * 16 + 16] == b"00000081ffffffff"      # rip
    assert reply[17 * 16:17 * 16 + 8] == b"46020000"               # eflags, 32 bits
    assert reply[17 * 16 + 8:17 * 16 + 16] == b"10000000"          # cs
    assert reply.endswith(b"0010000000000000" + b"00" * 8 * 3)      # cr3, cr4, cr8, efer


def test_p_and_P_one_register(target: FakeTarget, session: Session) -> None:
    target.regs[0]["rip"] = 0x100200
    assert NUMBERS["rip"] == 0x10
    assert ask(session, b"p10") == [b"0002100000000000"]
    assert ask(session, b"P0=0100000000000000") == [b"OK"]
    assert target.regs[0]["rax"] == 1
    assert ask(session, b"p%x" % NUMBERS["cr0"]) == [b"0000000000000000"]
    assert ask(session, b"P%x=0100000000000000" % NUMBERS["cr0"]) == [b"E16"]  # read-only
    assert ask(session, b"P0=01") == [b"E16"]  # wrong length
    assert ask(session, b"p%x" % len(REGISTERS)) == [b"E16"]  # no such register


def test_G_writes_what_changed(target: FakeTarget, session: Session) -> None:
    [block] = ask(session, b"g")
    changed = b"0500000000000000" + block[16:]
    assert ask(session, b"G" + changed) == [b"OK"]
    assert target.regs[0]["rax"] == 5
    assert ask(session, b"G00") == [b"E16"]


def test_memory_read_write_and_binary_write(target: FakeTarget, session: Session) -> None:
    target.memory.write(0x1000, b"hello")
    assert ask(session, b"m1000,5") == [b"68656c6c6f"]
    assert ask(session, b"M1000,2:4a4b") == [b"OK"]
    assert target.memory.read(0x1000, 2) == b"JK"
    # X data is binary: '#' and '}' go escaped.
    assert ask(session, b"X1002,3:}\x03}]z") == [b"OK"]
    assert target.memory.read(0x1002, 3) == b"#}z"
    assert ask(session, b"X1000,0:") == [b"OK"]  # gdb's probe for X
    assert ask(session, b"M1000,3:4a4b") == [b"E16"]  # length and data disagree
    assert ask(session, b"X1000,1:}") == [b"E16"]  # a dangling escape
    assert ask(session, b"mzz,1") == [b"E16"]


def test_memory_outside_ram_is_an_error_not_a_crash(session: Session) -> None:
    assert ask(session, b"m%x,4" % (64 << 20)) == [b"E0e"]
    assert ask(session, b"M%x,1:00" % (64 << 20)) == [b"E0e"]
    # A read running off the end of RAM returns what there is.
    assert ask(session, b"m%x,8" % ((16 << 20) - 2)) == [b"0000"]


def page_tables(target: FakeTarget) -> int:
    """PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 mapping 0xffffff8000000000:
    4 KiB pages 0..1 -> 0x9000, 0xb000 (page 2 unmapped); a 2 MiB page at +2 MiB -> 0x600000."""
    mem = target.memory
    mem.write_u64(0x1000 + 8 * 0x1FF, 0x2000 | 3)
    mem.write_u64(0x2000, 0x3000 | 3)
    mem.write_u64(0x3000, 0x4000 | 3)
    mem.write_u64(0x3000 + 8, 0x600000 | 0x83)
    mem.write_u64(0x4000, 0x9000 | 3)
    mem.write_u64(0x4000 + 8, 0xB000 | 3)
    return 0x1000


BASE = 0xFFFFFF8000000000


def test_virtual_reads_walk_the_page_tables_page_by_page(target: FakeTarget,
                                                         session: Session) -> None:
    target.cr3 = page_tables(target)
    target.memory.write(0x9FFE, b"ab")
    target.memory.write(0xB000, b"cd")      # the next virtual page is not the next frame
    target.memory.write(0x600010, b"huge")
    assert ask(session, b"m%x,4" % (BASE + 0xFFE)) == [b"61626364"]
    assert ask(session, b"m%x,4" % (BASE + 0x200010)) == [b"68756765"]
    # Up to an unmapped page: what was readable; starting there: an error.
    assert ask(session, b"m%x,4" % (BASE + 0x1FFE)) == [b"0000"]
    assert ask(session, b"m%x,4" % (BASE + 0x2000)) == [b"E0e"]
    assert ask(session, b"m%x,4" % 0x1000) == [b"E0e"]  # not mapped at all
    assert ask(session, b"m8000000000000000,1") == [b"E0e"]  # not canonical
    # A write across the gap is refused whole.
    assert ask(session, b"M%x,4:01020304" % (BASE + 0x1FFE)) == [b"E0e"]
    assert target.memory.read(0xBFFE, 2) == b"\0\0"
    assert ask(session, b"M%x,4:01020304" % (BASE + 0xFFE)) == [b"OK"]
    assert target.memory.read(0x9FFE, 2) + target.memory.read(0xB000, 2) == b"\1\2\3\4"


def test_five_level_tables(target: FakeTarget, session: Session) -> None:
    mem = target.memory
    mem.write_u64(0x5000 + 8 * 0x1FE, 0x1000 | 3)   # PML5 entry 510 -> the 4-level tree
    page_tables(target)
    mem.write(0x9000, b"la57")
    # PML5 510, PML4 511, sign-extended from bit 56: not canonical with 4 levels.
    vaddr = 0xFE00000000000000 | (0x1FE << 48) | (0x1FF << 39)
    assert vaddr == 0xFFFEFF8000000000
    target.cr3 = 0x1000
    assert ask(session, b"m%x,4" % vaddr) == [b"E0e"]
    target.cr3, target.cr4 = 0x5000, 1 << 12
    assert ask(session, b"m%x,4" % vaddr) == [b"6c613537"]


def test_software_breakpoints_live_in_guest_memory(target: FakeTarget,
                                                    session: Session) -> None:
    target.memory.write(0x2000, b"\x55\x48\x89\xe5")
    assert ask(session, b"Z0,2001,1") == [b"OK"]
    assert target.memory.read(0x2000, 4) == b"\x55\xcc\x89\xe5"
    assert ask(session, b"m2000,4") == [b"554889e5"]  # gdb sees the original byte
    assert ask(session, b"M2001,1:90") == [b"OK"]      # a write under it changes what returns
    assert target.memory.read(0x2001, 1) == b"\xcc"
    assert ask(session, b"Z0,2001,1") == [b"OK"]      # twice is once
    assert ask(session, b"z0,2001,1") == [b"OK"]
    assert target.memory.read(0x2000, 4) == b"\x55\x90\x89\xe5"
    assert ask(session, b"Z0,%x,1" % (64 << 20)) == [b"E0e"]


def test_hardware_points_fill_the_debug_registers(target: FakeTarget,
                                                  session: Session) -> None:
    assert ask(session, b"Z1,401000,1") == [b"OK"]
    assert ask(session, b"Z2,602000,4") == [b"OK"]
    assert ask(session, b"Z4,603000,8") == [b"OK"]
    assert ask(session, b"Z3,604001,1") == [b"OK"]
    assert ask(session, b"Z2,605000,4") == [b"E1c"]  # four slots only
    assert ask(session, b"Z2,605002,4") == [b"E16"]  # unaligned
    assert ask(session, b"Z2,605000,3") == [b"E16"]  # no 3-byte watch
    assert ask(session, b"Z9,605000,4") == [b""]     # a type we don't know
    assert ask(session, b"c") == []
    actions, debugging = target.resumed[-1]
    assert actions == {0: "c", 1: "c"}
    assert debugging is not None
    # slot 0: exec, len 1 -> L0; slot 1: write (01), 4 bytes (11) -> L1, bits 20-23 = 0b1101;
    # slot 2: access (11), 8 bytes (10) -> L2, bits 24-27 = 0b1011; slot 3: read -> access
    # (11), 1 byte (00) -> L3, bits 28-31 = 0b0011; GE|LE 0x300.
    assert debugging.debugreg == (0x401000, 0x602000, 0x603000, 0x604001, 0, 0, 0,
                                  0x3BD00355)
    assert debugging.hw_types == (1, 2, 4, 3)


def test_continue_then_a_breakpoint_stop(target: FakeTarget, session: Session) -> None:
    ask(session, b"qSupported:swbreak+;hwbreak+")
    ask(session, b"Z0,1000,1")
    assert ask(session, b"vCont;c") == []
    assert session.running
    actions, debugging = target.resumed[-1]
    assert actions == {0: "c", 1: "c"} and debugging is not None
    assert debugging.breakpoints == frozenset({0x1000})
    assert ask(session, b"g") == []  # gdb waits in all-stop mode; stray packets are ignored
    target.pending.append(Stop(1, reason="swbreak"))
    assert session.target_stopped() == b"$T05thread:2;swbreak:;#3c"
    assert not session.running
    assert ask(session, b"qC") == [b"QC2"]  # the stopped vCPU is the current thread


def test_points_the_back_end_cannot_deliver_are_refused_with_a_log_line(
        target: FakeTarget, session: Session, caplog: pytest.LogCaptureFixture) -> None:
    target.unavailable = {2: "no watchpoints here", 4: "no watchpoints here"}
    assert ask(session, b"Z2,602000,4") == [b"E16"]  # an error: gdb says it couldn't insert
    assert ask(session, b"Z2,602008,4") == [b"E16"]
    assert ask(session, b"z2,602000,4") == [b"OK"]   # removing one never fails
    assert ask(session, b"Z1,401000,1") == [b"OK"]   # what the back end has still works
    assert session.hw_points == [(1, 0x401000, 1)]
    assert [r.getMessage() for r in caplog.records] == ["gdb: no watchpoints here"]  # once


def test_watch_stop_names_the_address(target: FakeTarget, session: Session) -> None:
    ask(session, b"c")
    target.pending.append(Stop(0, reason="watch", address=0x602000))
    assert replies(session.target_stopped()) == [b"T05thread:1;watch:602000;"]


def test_without_swbreak_support_the_reason_is_left_out(target: FakeTarget,
                                                        session: Session) -> None:
    ask(session, b"qSupported:multiprocess+")
    ask(session, b"c")
    target.pending.append(Stop(0, reason="swbreak"))
    assert replies(session.target_stopped()) == [b"T05thread:1;"]


def test_ctrl_c_stops_a_running_guest(target: FakeTarget, session: Session) -> None:
    assert session.receive(b"\x03") == b""  # already stopped: nothing to say
    ask(session, b"vCont;c")
    out = session.receive(b"\x03")
    assert out == b"$T02thread:1;#d4"
    assert target.stop_alls == 2
    assert Stop(0, SIGINT).signal == 2


def test_step_runs_only_the_stepping_vcpu(target: FakeTarget, session: Session) -> None:
    ask(session, b"vCont;s:2;c")
    assert target.resumed[-1][0] == {1: "s"}
    target.pending.append(Stop(1))
    assert replies(session.target_stopped()) == [b"T05thread:2;"]
    ask(session, b"Hc1")
    ask(session, b"s")
    assert target.resumed[-1][0] == {0: "s"}
    target.pending.append(Stop(0))
    session.target_stopped()
    ask(session, b"vCont;c:1")
    assert target.resumed[-1][0] == {0: "c"}
    target.pending.append(Stop(0))
    session.target_stopped()
    assert ask(session, b"vCont;x") == [b"E16"]
    assert ask(session, b"vCont;c:9") == [b"E16"]
    assert ask(session, b"vCont?") == [b"vCont;c;C;s;S"]


def test_continue_at_an_address_sets_rip(target: FakeTarget, session: Session) -> None:
    ask(session, b"c100200")
    assert target.regs[0]["rip"] == 0x100200


def test_threads_are_vcpus(target: FakeTarget, session: Session) -> None:
    assert ask(session, b"qfThreadInfo") == [b"m1,2"]
    assert ask(session, b"qsThreadInfo") == [b"l"]
    assert ask(session, b"qC") == [b"QC1"]
    assert ask(session, b"T2") == [b"OK"]
    assert ask(session, b"T3") == [b"E16"]
    assert ask(session, b"qThreadExtraInfo,2") == [b"vCPU 1".hex().encode()]
    target.regs[1]["rax"] = 7
    assert ask(session, b"Hg2") == [b"OK"]
    assert ask(session, b"p0") == [b"0700000000000000"]
    assert ask(session, b"Hg0") == [b"OK"]   # any thread: stays
    assert ask(session, b"Hg5") == [b"E16"]
    assert ask(session, b"Hc-1") == [b"OK"]
    assert ask(session, b"qAttached") == [b"1"]


def test_target_description(session: Session) -> None:
    xml = target_xml()
    chunks = []
    offset = 0
    while True:
        [reply] = ask(session, b"qXfer:features:read:target.xml:%x,200" % offset)
        chunks.append(reply[1:])
        offset += len(reply) - 1
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    assert b"".join(chunks) == xml
    root = ET.fromstring(xml)
    assert root.tag == "target"
    assert root.findtext("architecture") == "i386:x86-64"
    features = {f.get("name"): [r.get("name") for r in f.findall("reg")]
                for f in root.findall("feature")}
    assert features["org.gnu.gdb.i386.core"][:3] == ["rax", "rbx", "rcx"]
    assert "xmm15" in features["org.gnu.gdb.i386.sse"]
    assert features["org.gnu.gdb.i386.segments"] == ["fs_base", "gs_base"]
    assert features["org.pyvmm.gdb.x86-64.system"] == ["k_gs_base", "cr0", "cr2", "cr3",
                                                       "cr4", "cr8", "efer"]
    bits = sum(int(r.get("bitsize") or 0) for r in root.iter("reg"))
    assert bits == 8 * G_BYTES
    # Every type a register names is gdb's own or defined in its feature.
    builtin = {"int", "int32", "int64", "code_ptr", "data_ptr", "i387_ext"}
    for feature in root.findall("feature"):
        defined = {t.get("id") for t in feature if t.tag in ("flags", "vector", "union")}
        assert {r.get("type") for r in feature.findall("reg")} <= builtin | defined
    assert ask(session, b"qXfer:features:read:other.xml:0,10") == [b"E00"]


def test_monitor_info_registers(target: FakeTarget, session: Session) -> None:
    target.regs[0].update(rip=0x100201, cr3=0x9000)
    out = replies(session.receive(frame(b"qRcmd," + b"info registers".hex().encode())))
    assert out[-1] == b"OK"
    text = b"".join(bytes.fromhex(p[1:].decode()) for p in out[:-1]).decode()
    assert "RIP=0000000000100201" in text and "CR3=0000000000009000" in text
    out = replies(session.receive(frame(b"qRcmd," + b"dump /tmp/x.core".hex().encode())))
    assert bytes.fromhex(out[0][1:].decode()) == b"dumped\n"
    assert target.monitored == ["dump /tmp/x.core"]
    out = replies(session.receive(frame(b"qRcmd," + b"frobnicate".hex().encode())))
    assert b"unknown monitor command" in bytes.fromhex(out[0][1:].decode())


def test_detach_restores_memory_and_lets_every_vcpu_run(target: FakeTarget,
                                                         session: Session) -> None:
    target.memory.write(0x3000, b"\x90")
    ask(session, b"Z0,3000,1")
    ask(session, b"Z1,3000,1")
    assert ask(session, b"D") == [b"OK"]
    assert target.memory.read(0x3000, 1) == b"\x90"
    assert target.resumed[-1] == ({0: "c", 1: "c"}, None)
    assert session.finished


def test_kill_ends_the_machine(target: FakeTarget, session: Session) -> None:
    assert ask(session, b"k") == []
    assert target.killed and session.finished


def test_exit_is_reported(session: Session) -> None:
    assert session.exited(7) == b"$W07#be"


def test_fuzzed_commands_never_raise_anything_but_protocol_errors(target: FakeTarget) -> None:
    """Random well-framed commands: replies (E or empty), never an exception."""
    rng = random.Random(7)
    letters = b"?gGpPmMXHTcsZzDqQv"
    session = Session(target)
    for _ in range(3000):
        payload = bytes((rng.choice(letters),)) + bytes(
            rng.choice(b"0123456789abcdef,:;=-xX}*") for _ in range(rng.randrange(0, 30)))
        if payload[:1] in (b"D", b"k"):
            continue
        try:
            session.receive(frame(payload, rle=False))
        except ProtocolError:
            pass
        if session.running:
            target.pending.append(Stop(0))
            session.target_stopped()
