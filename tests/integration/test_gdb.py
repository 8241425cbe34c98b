"""Real gdb (``gdb -batch``) against tiny guests under ``--gdb``: attach, registers,
memory, stepi, breakpoints, Ctrl-C, detach; the stub's lifecycle (timeout, SIGTERM,
a second gdb, a hostile client)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

import pyvmm

from pyvmm.kvm.system import is_pvm_host

from tests.integration.conftest import REPO, image, pyvmm_command

GDB = shutil.which("gdb")
pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed")
WAIT = 60


def start_pyvmm(*args: str) -> subprocess.Popen:
    return subprocess.Popen(pyvmm_command("run", *args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)


def wait_for_socket(path: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert proc is None or proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no socket at {path}"
        time.sleep(0.05)


def gdb_args(target: str, elf: Path, *commands: str) -> list[str]:
    args = [str(GDB), "-batch", "-nx", "-ex", "set confirm off", "-ex", f"target remote {target}"]
    for command in commands:
        args += ["-ex", command]
    return args + [str(elf)]


def run_gdb(target: str, elf: Path, *commands: str) -> str:
    result = subprocess.run(gdb_args(target, elf, *commands), capture_output=True, text=True,
                            timeout=WAIT)
    return result.stdout + result.stderr


def finish(proc: subprocess.Popen, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = proc.communicate(stdin, timeout=WAIT)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def symbol_bytes(elf: Path, name: str, length: int) -> tuple[int, bytes]:
    """A symbol's address and its first bytes, from the ELF file (pyelftools)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(elf, "rb") as stream:
        f = ELFFile(stream)
        symtab = f.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        address = next(s["st_value"] for s in symtab.iter_symbols() if s.name == name)
        for segment in f.iter_segments():
            start = segment["p_vaddr"]
            if segment["p_type"] == "PT_LOAD" and start <= address < start + segment["p_filesz"]:
                return address, segment.data()[address - start:address - start + length]
    raise AssertionError(f"{name} not loaded")


def rips(text: str) -> list[int]:
    return [int(m, 16) for m in re.findall(r"^rip\s+(0x[0-9a-f]+)", text, re.MULTILINE)]


def test_attach_at_start_registers_memory_stepi_detach(tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    elf = image("tiny/bootcheck.elf")
    proc = start_pyvmm("-k", str(image("tiny/bootcheck.bzImage")), "--gdb", f"unix:{sock}",
                       "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    entry, code = symbol_bytes(elf, "startup_64", 4)
    core = tmp_path / "guest.core"
    out = run_gdb(str(sock), elf, "info registers rip", "x/4xb $pc", "stepi",
                  "info registers rip", "info registers cr0 cr3 efer", "info threads",
                  "monitor info registers", f"monitor dump {core}", "detach")
    assert rips(out) == [entry, entry + 1], out  # cli is one byte
    shown = re.search(r"<startup_64>:\s+(.*)", out)
    assert shown is not None, out
    assert bytes(int(b, 16) for b in shown.group(1).split()) == code
    assert re.search(r"cr0\s+0x8000001[13]", out), out  # paging and protection on
    assert re.search(r"efer\s+0x5[0-9a-f]{2}", out), out  # LME|LMA
    assert re.search(r"\* 1\s+Thread 1 \(vCPU 0", out), out
    assert "RIP=0000000000100201" in out
    assert f"guest dump written to {core}" in out
    summary = subprocess.run(pyvmm_command("inspect", "regs", str(core)), capture_output=True,
                             text=True, cwd=REPO)
    assert re.search(r"rip\W+0x0*100201", summary.stdout, re.IGNORECASE), summary.stdout
    assert "detached" in out
    status, stdout, stderr = finish(proc)
    assert status == 0, stderr
    assert "pyvmm-tiny: done" in stdout
    assert not sock.exists()


def test_breakpoints_hardware_and_software(tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    elf = image("tiny/exitcode.elf")
    proc = start_pyvmm("-k", str(image("tiny/exitcode.bzImage")), "-a", "exitcode=3",
                       "--gdb", f"unix:{sock}", "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    main, _ = symbol_bytes(elf, "main", 1)
    putc, _ = symbol_bytes(elf, "putc", 1)
    out = run_gdb(str(sock), elf, "hbreak main", "continue", "info registers rip", "delete",
                  "break putc", "continue", "bt", "info registers rip", "x/1xb $pc", "delete",
                  "detach")
    assert re.search(r"Breakpoint 1, 0x0*%x in main" % main, out), out
    assert re.search(r"Breakpoint 2, 0x0*%x in putc" % putc, out), out
    assert re.search(r"#1 .* in main", out), out
    assert rips(out) == [main, putc]
    assert re.search(r"<putc>:\s+0x(?!cc)", out), out  # gdb sees the original byte
    status, stdout, _ = finish(proc)
    assert status == 7  # (3 << 1) | 1: the int3 was taken out, the guest ran on whole
    assert "pyvmm-tiny: exit 3" in stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_a_running_guest_and_detach_lets_it_finish(tmp_path: Path) -> None:
    port = free_port()
    marker = tmp_path / "continuing"
    elf = image("tiny/echo.elf")
    proc = start_pyvmm("-k", str(image("tiny/echo.bzImage")), "--gdb", str(port),
                       "--timeout", "60")
    assert proc.stdout is not None
    assert b"echo ready" in proc.stdout.readline()
    gdb = subprocess.Popen(gdb_args(f"127.0.0.1:{port}", elf, "info registers rip",
                                    f"shell touch {marker}", "continue",
                                    "info registers rip", "stepi", "info registers rip",
                                    "detach"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_socket(marker)  # attached: the continue comes next
    time.sleep(1)
    assert gdb.poll() is None
    gdb.send_signal(signal.SIGINT)
    out = gdb.communicate(timeout=WAIT)[0]
    assert "received signal SIGINT" in out, out
    attached, interrupted, stepped = rips(out)
    assert stepped != interrupted, out
    status, stdout, stderr = finish(proc, b"hi\nq")
    assert status == 0, stderr
    assert "hi" in stdout and "pyvmm-tiny: bye" in stdout


def test_time_held_by_gdb_does_not_count_against_the_timeout(tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    proc = start_pyvmm("-k", str(image("tiny/bootcheck.bzImage")), "--gdb", f"unix:{sock}",
                       "--gdb-wait", "--timeout", "2")
    wait_for_socket(sock, proc)
    time.sleep(2.5)  # waiting for gdb is held time too
    out = run_gdb(str(sock), image("tiny/bootcheck.elf"), "shell sleep 2.5", "detach")
    assert "detached" in out
    status, stdout, stderr = finish(proc)
    assert status == 0, stderr
    assert "pyvmm-tiny: done" in stdout


def test_sigterm_ends_a_run_gdb_holds(tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    proc = start_pyvmm("-k", str(image("tiny/loop.bzImage")), "--gdb", f"unix:{sock}",
                       "--gdb-wait")
    wait_for_socket(sock, proc)
    gdb = subprocess.Popen(gdb_args(str(sock), image("tiny/loop.elf"), "info registers rip",
                                    "shell sleep 30"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status, _, stderr = finish(proc)
    assert status == 128 + signal.SIGTERM, stderr
    assert time.monotonic() - start < 2
    gdb.kill()
    gdb.communicate()
    assert not sock.exists()


def packet(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


def test_a_second_gdb_is_refused_a_hostile_one_dropped_and_the_vmm_goes_on(
        tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    proc = start_pyvmm("-k", str(image("tiny/echo.bzImage")), "--gdb", f"unix:{sock}",
                       "--timeout", "60")
    wait_for_socket(sock, proc)
    first = socket.socket(socket.AF_UNIX)
    first.connect(str(sock))
    first.settimeout(10)
    first.sendall(packet(b"?"))
    assert first.recv(100) == b"+" + packet(b"T05thread:1;")
    second = socket.socket(socket.AF_UNIX)
    second.connect(str(sock))
    second.settimeout(10)
    assert b"another gdb is attached" in second.recv(200)
    assert second.recv(100) == b""  # and closed
    try:
        first.sendall(b"$" + b"A" * (1 << 20))  # a packet that never ends
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before we were done
    try:
        assert first.recv(4096) == b""  # closed, no reply
    except ConnectionResetError:
        pass
    # The guest runs on (the stub let it go) and a real gdb can attach again.
    out = run_gdb(str(sock), image("tiny/echo.elf"), "info registers rip", "detach")
    assert rips(out) and "detached" in out
    status, stdout, stderr = finish(proc, b"ok\nq")
    assert status == 0, stderr
    assert "broke the protocol" in stderr and "refused a second connection" in stderr
    assert "pyvmm-tiny: bye" in stdout


def test_gdb_attaches_to_a_machine_of_the_python_api(
        pyvmm_machine: Callable[..., pyvmm.Machine], tmp_path: Path) -> None:
    sock = tmp_path / "gdb.sock"
    vm = pyvmm_machine(kernel=image("tiny/bootcheck.bzImage"), gdb=f"unix:{sock}",
                       gdb_wait=True, timeout=60)
    wait_for_socket(sock)
    out = run_gdb(str(sock), image("tiny/bootcheck.elf"), "info registers rip", "detach")
    entry, _ = symbol_bytes(image("tiny/bootcheck.elf"), "startup_64", 1)
    assert rips(out) == [entry], out
    assert vm.wait(WAIT).status == 0
    assert "pyvmm-tiny: done" in vm.console.text


def test_threads_are_vcpus_and_a_breakpoint_names_its_vcpu(tmp_path: Path) -> None:
    """Two vCPUs: the second runs ap_main once the first starts it (INIT/SIPI)."""
    sock = tmp_path / "gdb.sock"
    elf = image("tiny/smp.elf")
    proc = start_pyvmm("-k", str(image("tiny/smp.bzImage")), "--cpus", "2", "-a", "cpus=2",
                       "--gdb", f"unix:{sock}", "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    ap_main, _ = symbol_bytes(elf, "ap_main", 1)
    out = run_gdb(str(sock), elf, "info threads", "hbreak ap_main", "continue",
                  "info registers rip", "thread 1", "info registers rip", "delete", "detach")
    assert re.search(r"2\s+Thread 2 \(vCPU 1", out), out
    assert re.search(r"Thread 2 hit Breakpoint 1, 0x0*%x in ap_main" % ap_main, out), out
    on_ap, on_boot_cpu = rips(out)
    assert on_ap == ap_main and on_boot_cpu != ap_main
    status, stdout, stderr = finish(proc)
    assert status == 0, stderr
    assert "smp: 2 cpus up" in stdout


def test_a_software_breakpoint_hits_again_after_gdb_steps_over_it(tmp_path: Path) -> None:
    """gdb continues from a breakpoint by taking it out, stepping, putting it back."""
    sock = tmp_path / "gdb.sock"
    proc = start_pyvmm("-k", str(image("tiny/bootcheck.bzImage")), "--gdb", f"unix:{sock}",
                       "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    out = run_gdb(str(sock), image("tiny/bootcheck.elf"), "break putc", "continue", "continue",
                  "continue", "delete", "detach")
    assert len(re.findall(r"Breakpoint 1, 0x[0-9a-f]+ in putc", out)) == 3, out
    status, stdout, stderr = finish(proc)
    assert status == 0, stderr
    assert "pyvmm-tiny: hello\ncheck hdrs ok" in stdout and "pyvmm-tiny: done" in stdout


def test_the_guests_own_int3_reaches_its_handler_while_gdb_has_breakpoints(
        tmp_path: Path) -> None:
    """The guest's int3s are its own (a kernel's text_poke and int3 self-test): with
    gdb's breakpoints armed they still reach the guest's #BP handler, with the
    return address the CPU would push, and gdb sees only its own breakpoint."""
    sock = tmp_path / "gdb.sock"
    elf = image("tiny/int3.elf")
    proc = start_pyvmm("-k", str(image("tiny/int3.bzImage")), "-a", "count=3",
                       "--gdb", f"unix:{sock}", "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    report, _ = symbol_bytes(elf, "int3_report", 1)
    out = run_gdb(str(sock), elf, "hbreak main", "continue", "delete", "break int3_report",
                  "continue", "info registers rip", "p *(long *)&int3_handled",
                  "p *(long *)&int3_wrong_return", "delete", "detach")
    assert re.search(r"Breakpoint 2, 0x0*%x in int3_report" % report, out), out
    assert "SIGTRAP" not in out, out
    assert rips(out) == [report], out
    assert re.search(r"^\$1 = 3$", out, re.MULTILINE) and re.search(r"^\$2 = 0$", out,
                                                                      re.MULTILINE), out
    status, stdout, stderr = finish(proc)
    assert "int3: 3 of 3 handled, return address ok" in stdout, stdout + stderr
    assert status == 7, stderr  # (3 << 1) | 1


def test_a_watchpoint_fires_or_is_refused_saying_why(tmp_path: Path) -> None:
    """Hardware KVM fires DR7 data breakpoints; kvm_pvm never does, so there pyvmm
    refuses them with one line instead of letting gdb wait for a hit that never comes."""
    sock = tmp_path / "gdb.sock"
    elf = image("tiny/int3.elf")
    proc = start_pyvmm("-k", str(image("tiny/int3.bzImage")), "-a", "count=3",
                       "--gdb", f"unix:{sock}", "--gdb-wait", "--timeout", "60")
    wait_for_socket(sock, proc)
    out = run_gdb(str(sock), elf, "hbreak main", "continue", "delete",
                  "watch *(long *)&int3_handled", "continue", "info registers rip", "delete",
                  "detach")
    status, stdout, stderr = finish(proc)
    assert status == 7, stderr
    if is_pvm_host():
        assert "Could not insert hardware watchpoint" in out, out
        assert "watchpoints are not available on kvm_pvm" in stderr, stderr
    else:
        assert re.search(r"Hardware watchpoint 2: .*\s+Old value = 0\s+New value = 1", out), out
        bp_entry, _ = symbol_bytes(elf, "bp_entry", 1)
        assert bp_entry < rips(out)[0] < bp_entry + 32, out  # in the guest's #BP handler
