"""Real gdb against the minimal Linux kernel, under ``pyvmm run --gdb --gdb-wait`` and QEMU ``-S``.

One session each, the same gdb commands, the same answers asserted of both:
``hbreak start_kernel`` stops there (a hardware breakpoint, set before paging
is on), ``bt``; ``hbreak int3_selftest``, then a software ``break`` on
``kernel_init``: on the way the kernel's int3 self-test executes its own
``int3`` with our breakpoint armed (so KVM traps every #BP to the VMM), which
must go back to the guest's handler (else the self-test's BUG_ON stops the
boot) and not to gdb; then a ``break`` on the reboot
syscall's handler (``__x64_sys_reboot``, which the guest's /init calls last)
stops there, in the thread that hit it, with both vCPUs listed; a ``watch`` on
``jiffies`` fires; ``x/s
linux_banner``; ``jiffies`` grows between the two; ``stepi`` advances RIP by
one instruction; ``detach`` lets the guest finish and the VMM exit 0.

With the debug kernel (``bash images/build.sh linux-debug``: DWARF and the
kernel's scripts/gdb), the kernel's own ``lx-dmesg`` and ``lx-ps`` print the
log and the task list at the reboot syscall, under both VMMs alike.

In the rig these need its patched QEMU (scripts/rig-qemu/): Debian's TCG
doesn't deliver a nested guest's breakpoint traps to the KVM inside, and the
tests skip there, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from tests.integration.conftest import REPO, image, pyvmm_command

GDB = shutil.which("gdb")
#: Seconds for one whole session (boot to the guest's end; gdb's stops in the rig are slow).
SESSION_TIMEOUT = 400


def why_no_breakpoints() -> str | None:
    if GDB is None:
        return "gdb is not installed (apt-get install gdb)"
    if os.environ.get("RIG") == "1" and os.environ.get("RIG_QEMU") != "patched":
        return ("the rig runs the system QEMU, whose nested SVM doesn't deliver the guest's "
                "breakpoint traps to KVM: build the patched one (bash scripts/rig-qemu/build.sh)")
    return None


pytestmark = pytest.mark.skipif(why_no_breakpoints() is not None,
                                reason=str(why_no_breakpoints()))


def py(expression: str, label: str) -> str:
    """A gdb command printing ``LABEL=value`` of a Python expression, for the assertions."""
    return f"python print('{label}=' + str({expression}))"


PC = "hex(int(gdb.parse_and_eval('$pc')))"
FUNCTION = "gdb.selected_frame().name()"
THREAD = "gdb.selected_thread().num"
JIFFIES = "int(gdb.parse_and_eval('*(unsigned long *)&jiffies'))"
#: The address of the instruction after the current one, from gdb's disassembler.
NEXT_PC = ("hex(gdb.selected_frame().architecture().disassemble("
           "int(gdb.parse_and_eval('$pc')), count=2)[1]['addr'])")


def timed(command: str, label: str) -> str:
    return (f"python import time; t = time.perf_counter(); gdb.execute({command!r}); "
            f"print('{label}-seconds=%.3f' % (time.perf_counter() - t))")


COMMANDS = (
    "hbreak start_kernel", timed("continue", "continue"),
    py(FUNCTION, "stop1"), py(PC, "pc1"), "bt", "delete",
    "hbreak int3_selftest", "continue", py(FUNCTION, "stop_selftest"),
    "x/i int3_selftest_ip", "delete",
    "break kernel_init", "continue", py(FUNCTION, "stop2"), py(JIFFIES, "jiffies2"), "delete",
    "watch *(unsigned long *)&jiffies", "continue", py(JIFFIES, "jiffies_watched"), "delete",
    "break __x64_sys_reboot", "continue", py(FUNCTION, "stop3"), py(PC, "pc3"),
    py(THREAD, "thread3"), "info threads", py("len(gdb.selected_inferior().threads())",
                                              "threads"),
    py(JIFFIES, "jiffies3"), "x/s &linux_banner",
    py(NEXT_PC, "next3"), timed("stepi", "stepi"), py(PC, "pc4"),
    "delete", "detach",
)


@dataclass
class Session:
    transcript: str
    status: int
    console: str

    def value(self, label: str) -> str:
        match = re.search(rf"^{label}=(.*)$", self.transcript, re.MULTILINE)
        assert match, f"no {label}= in gdb's transcript:\n{self.transcript}"
        return match.group(1).strip()


def symbol(name: str) -> int:
    """A symbol's address in the minimal kernel's vmlinux (no KASLR: it runs there)."""
    out = subprocess.run(["nm", str(image("linux/vmlinux"))], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.MULTILINE)
    assert match, f"{name} is not in vmlinux"
    return int(match.group(1), 16)


def session(vmm: list[str], sock: Path, commands: Sequence[str] = COMMANDS,
            vmlinux: Path | None = None) -> Session:
    """Start the VMM (stopped until gdb continues), run ``commands`` in gdb, wait for its end."""
    assert GDB is not None
    proc = subprocess.Popen(vmm, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, f"no gdb socket at {sock}"
            time.sleep(0.05)
        vmlinux = vmlinux or image("linux/vmlinux")
        # The kernel's gdb scripts (next to a debug vmlinux) load with it, as its docs say.
        gdb = [GDB, "-batch", "-nx", "-iex", f"add-auto-load-safe-path {vmlinux.parent}",
               "-ex", "set confirm off", "-ex", f"target remote {sock}"]
        for command in commands:
            gdb += ["-ex", command]
        result = subprocess.run(gdb + [str(vmlinux)],
                                capture_output=True, text=True, timeout=SESSION_TIMEOUT)
        out, _ = proc.communicate(timeout=SESSION_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(result.stdout + result.stderr)  # the transcript, for -s and the rig's log
    return Session(result.stdout + result.stderr, proc.returncode, out.decode(errors="replace"))


APPEND = "console=ttyS0 quiet pyvmm.run=echo,gdb-guest-ran"


def pyvmm_session(tmp_path: Path, kernel: Path | None = None,
                  commands: Sequence[str] = COMMANDS) -> Session:
    sock = tmp_path / "pyvmm-gdb.sock"
    kernel = kernel or image("linux/bzImage")
    return session(pyvmm_command(
        "run", "-k", str(kernel), "-i", str(image("initramfs.cpio.gz")),
        "-c", "2", "-m", "512M", "-a", APPEND, "--gdb", f"unix:{sock}", "--gdb-wait",
        "--timeout", str(SESSION_TIMEOUT)), sock, commands, kernel.parent / "vmlinux")


def qemu_session(tmp_path: Path, kernel: Path | None = None,
                 commands: Sequence[str] = COMMANDS) -> Session:
    sock = tmp_path / "qemu-gdb.sock"
    kernel = kernel or image("linux/bzImage")
    return session([
        "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off", "-enable-kvm",
        "-cpu", "host", "-m", "512M", "-smp", "2", "-display", "none", "-no-reboot",
        "-nodefaults", "-kernel", str(kernel),
        "-initrd", str(image("initramfs.cpio.gz")), "-append", APPEND, "-serial", "stdio",
        "-gdb", f"unix:{sock},server=on,wait=off", "-S"], sock, commands,
        kernel.parent / "vmlinux")


def check(run: Session) -> None:
    """What both VMMs' sessions must show."""
    assert run.value("stop1") == "start_kernel", run.transcript
    assert int(run.value("pc1"), 16) == symbol("start_kernel")
    assert re.search(r"^#0 .*start_kernel", run.transcript, re.MULTILINE), run.transcript
    # The self-test's int3 ran with our breakpoint on kernel_init armed: the guest
    # handled it (the boot went on) and gdb never saw it (the next stop is ours).
    assert run.value("stop_selftest") == "int3_selftest"
    # (gdb names the label int3_selftest+N: the function's symbol wins.)
    assert re.search(r"<int3_selftest\S*>:\s+int3", run.transcript), run.transcript
    assert "SIGTRAP" not in run.transcript, run.transcript
    assert run.value("stop2") == "kernel_init"
    # A data watchpoint (DR7 write watch) fires at the next tick: jiffies moved on.
    assert re.search(r"Hardware watchpoint \d+: \*\(unsigned long \*\)&jiffies\s+Old value",
                     run.transcript), run.transcript
    assert int(run.value("jiffies_watched")) > int(run.value("jiffies2"))
    assert run.value("stop3") == "__x64_sys_reboot"
    assert int(run.value("pc3"), 16) == symbol("__x64_sys_reboot")  # in the thread that hit it
    assert run.value("threads") == "2"
    assert re.search(r'<linux_banner>:\s+"Linux version ', run.transcript), run.transcript
    assert int(run.value("jiffies3")) > int(run.value("jiffies2"))
    assert run.value("pc4") == run.value("next3")  # one instruction on
    assert "gdb-guest-ran" in run.console and "pyvmm-init: exit 0" in run.console, run.console
    assert run.status == 0, run.console


@pytest.fixture(scope="module")
def pyvmm_run(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return pyvmm_session(tmp_path_factory.mktemp("pyvmm-gdb"))


def test_pyvmm_gdb_breakpoints(pyvmm_run: Session) -> None:
    check(pyvmm_run)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU")
def test_qemu_gdb_breakpoints_give_the_same_answers(pyvmm_run: Session, tmp_path: Path) -> None:
    theirs = qemu_session(tmp_path)
    check(theirs)
    for label in ("stop1", "pc1", "stop_selftest", "stop2", "stop3", "pc3", "threads"):
        assert pyvmm_run.value(label) == theirs.value(label), label
    banner = re.compile(r'<linux_banner>:\s+(".*")')
    assert banner.findall(pyvmm_run.transcript) == banner.findall(theirs.transcript)


# -- the kernel's own gdb scripts, on the debug kernel ---------------------------------------

DEBUG_KERNEL = REPO / "images" / "out" / "linux-debug"


def why_no_debug_kernel() -> str | None:
    if not (DEBUG_KERNEL / "vmlinux-gdb.py").exists():
        return (f"the debug kernel is not built ({DEBUG_KERNEL}: bash images/build.sh "
                "linux-debug; scripts/test.sh builds it with the rig's patched QEMU)")
    return None


#: At the reboot syscall (the guest's /init is done): the kernel's log and its tasks.
#: (hbreak: at -S paging is off, so an int3 can't be written at a kernel address yet.)
LX_COMMANDS = (
    "hbreak __x64_sys_reboot", "continue", py(FUNCTION, "stop"), "delete",
    "echo lx-dmesg-begin\\n", "lx-dmesg", "echo lx-dmesg-end\\n",
    "echo lx-ps-begin\\n", "lx-ps", "echo lx-ps-end\\n", "detach",
)


@dataclass
class KernelView:
    """What lx-dmesg and lx-ps printed: the log's lines, the tasks by pid."""

    dmesg: list[str]
    tasks: dict[int, str]


def kernel_view(run: Session) -> KernelView:
    def between(name: str) -> str:
        match = re.search(rf"^{name}-begin\n(.*?)^{name}-end$", run.transcript,
                          re.MULTILINE | re.DOTALL)
        assert match, f"no {name} output in gdb's transcript:\n{run.transcript}"
        return match.group(1)

    dmesg = [re.sub(r"^\[\s*[0-9.]+\] ", "", line) for line in between("lx-dmesg").splitlines()]
    # lx-ps: "0xffff888000123400 <pid> <comm>" per task.
    tasks = {int(m.group(1)): m.group(2) for m in re.finditer(
        r"^0x[0-9a-f]+\s+(\d+)\s+(\S+)\s*$", between("lx-ps"), re.MULTILINE)}
    return KernelView(dmesg, tasks)


def check_kernel_view(run: Session) -> KernelView:
    assert run.value("stop") == "__x64_sys_reboot", run.transcript
    view = kernel_view(run)
    assert view.dmesg and view.dmesg[0].startswith("Linux version 6.1"), run.transcript
    assert any(line.startswith("Command line: ") and APPEND in line
               for line in view.dmesg), view.dmesg
    assert any(line.startswith("Run /init as init process") for line in view.dmesg), view.dmesg
    assert view.tasks.get(0) == "swapper/0" and view.tasks.get(2) == "kthreadd", run.transcript
    assert 1 in view.tasks, run.transcript  # /init, the reboot syscall's caller
    assert "gdb-guest-ran" in run.console and run.status == 0, run.console
    return view


needs_debug_kernel = pytest.mark.skipif(why_no_debug_kernel() is not None,
                                        reason=str(why_no_debug_kernel()))


@pytest.fixture(scope="module")
def pyvmm_lx_run(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return pyvmm_session(tmp_path_factory.mktemp("pyvmm-lx"), DEBUG_KERNEL / "bzImage",
                         LX_COMMANDS)


@needs_debug_kernel
def test_pyvmm_runs_the_kernels_gdb_scripts(pyvmm_lx_run: Session) -> None:
    check_kernel_view(pyvmm_lx_run)


@needs_debug_kernel
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU")
def test_qemu_runs_the_kernels_gdb_scripts_alike(pyvmm_lx_run: Session, tmp_path: Path) -> None:
    ours = check_kernel_view(pyvmm_lx_run)
    theirs = check_kernel_view(qemu_session(tmp_path, DEBUG_KERNEL / "bzImage", LX_COMMANDS))
    assert ours.dmesg[0] == theirs.dmesg[0]  # the same kernel
    assert {pid: ours.tasks[pid] for pid in (0, 1, 2)} == \
        {pid: theirs.tasks[pid] for pid in (0, 1, 2)}
