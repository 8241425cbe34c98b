#!/usr/bin/env python3
"""Run a command where ``/dev/kvm`` is real hardware-assisted KVM, on any Linux host.

    python3 scripts/rig.py [options] -- COMMAND [ARGS...]

QEMU's TCG emulates an AMD CPU with SVM and nested paging; Debian's own
kernel (``linux-image-amd64``) boots in it, loads ``kvm_amd``, and inside,
``/dev/kvm`` is SVM KVM.  This host's ``/`` is shared in read-only over 9p
with a tmpfs overlay on top, so the host's Python, the checkout and QEMU run
there unchanged, in the current directory.  Writes inside are thrown away;
``/job`` (``$RIG_JOB``) is shared read-write to pass files out.

The rig is not perfectly reliable itself (QEMU's TCG emulation of SVM can
panic or freeze the rig's kernel), so it watches its own health and keeps its
failures apart from the command's:

* the rig kernel's console (ttyS0) is read for panics and oopses (``oops=panic``
  makes every oops a panic, printed whatever the log level) and for a
  heartbeat the rig's init prints every few seconds; silence past
  ``--watchdog`` while the command runs means the rig froze: its CPU's state
  is saved from QEMU's monitor (``rig-freeze.txt`` in the job directory) and
  it is sent a key press, an NMI, then a stop/cont (``Session.NUDGES``); if
  one wakes it (QEMU's APIC or TCG thread missed an interrupt pending: a lost
  kick), the session goes on and the freeze is reported on stderr; if the
  command then fails, the session counts as the rig's failure (retried): a
  freeze stands the rig's clocks and timers still for half a minute or more;
* the command's output travels on a second serial port (ttyS1), streamed to
  our stdout as it comes, and is never searched for failures;
* the command's status comes back as a ``RIG-RC=`` line on ttyS0; a rig that
  stops without one failed.

A failed rig session is retried (``--retries``, default once).  Exit status:
the command's; 124 if the command outlived ``--timeout``; 125 if the rig
itself failed on every attempt (the reason on stderr, starting ``rig:
FAILED``); 126 if the rig can't run on this host (missing packages).

Everything built is cached in ``/var/tmp/pyvmm-rig`` (the rig's initramfs,
keyed by kernel version and init script).

The rig runs the patched QEMU that ``scripts/rig-qemu/build.sh`` builds when
it is there (its TCG delivers a nested guest's breakpoint traps, int3 and
DR0-DR3, to the KVM inside as hardware does; Debian's doesn't), else the
system's; it says which on stderr, and tells the command in ``$RIG_QEMU``
(``patched`` or ``system``) so tests that need breakpoints can skip.

Before booting, the checkout is byte-compiled (``compileall``): this
environment sets PYTHONDONTWRITEBYTECODE and the rig's writable layer is
discarded, so otherwise every Python start inside would recompile pyvmm.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import hashlib
import io
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # pyvmm's cpio writer and module resolver, from this checkout
from pyvmm.errors import PyvmmError  # noqa: E402
from pyvmm.command.initramfs.cpio import CpioWriter  # noqa: E402
from pyvmm.command.initramfs.modules import ModuleSet, find_modules, read_module  # noqa: E402

CACHE = Path("/var/tmp/pyvmm-rig")
EXIT_TIMEOUT, EXIT_RIG_FAILED, EXIT_UNAVAILABLE = 124, 125, 126
HEARTBEAT_SECONDS = 5
#: The patched QEMU's build script and patch: their hash names its directory in CACHE.
RIG_QEMU_SOURCES = (REPO / "scripts/rig-qemu/build.sh",
                    REPO / "scripts/rig-qemu/svm-breakpoints.patch")

#: Modules the rig's init loads (with what they depend on, from modules.dep).
MODULES = ("kvm_amd", "virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Environment variables carried into the command (PATH and HOME always).
CARRIED_ENV = ("PATH", "HOME", "TERM", "LANG", "CI", "PYVMM_REQUIRE_IMAGES",
               "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTEST_ADDOPTS")
#: And every variable named so: pyvmm's and its tests' own (PYVMM_COMMAND_KERNELS, ...).
CARRIED_PREFIXES = ("PYVMM_",)
#: What on the rig kernel's console means the rig itself broke.
FAILURE_PATTERNS = re.compile(
    rb"Kernel panic|Oops:|BUG: |kernel BUG at|stack guard page|general protection fault"
    rb"|soft lockup|rcu_sched self-detected stall|RIG-ERROR")

INIT = r"""#!/bin/sh
# The rig's init: load KVM and 9p, build the root (host / read-only + tmpfs),
# run /job/cmd.sh with its output on ttyS1, report its status on ttyS0.
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m || echo "RIG-ERROR: insmod $m failed" > /dev/ttyS0
done
o="trans=virtio,version=9p2000.L,msize=1048576,cache=loose"
mount -t 9p -o $o,ro host /mnt && mount -t 9p -o $o job /job \
    || echo "RIG-ERROR: 9p mount failed" > /dev/ttyS0
mount -t tmpfs -o size=75% tmpfs /run; mkdir -p /run/u /run/w /run/root
mount -t overlay overlay -o lowerdir=/mnt,upperdir=/run/u,workdir=/run/w /run/root
for d in dev proc sys; do mount --bind /$d /run/root/$d; done
mkdir -p /run/root/dev/pts /run/root/dev/shm /run/root/job
mount -t devpts devpts /run/root/dev/pts; mount -t tmpfs tmpfs /run/root/dev/shm
mount --bind /job /run/root/job
[ -c /dev/kvm ] || echo "RIG-ERROR: no /dev/kvm after loading kvm_amd" > /dev/ttyS0
(while :; do echo RIG-HEARTBEAT > /dev/ttyS0; sleep @HEARTBEAT@; done) &
stty -F /dev/ttyS1 raw -echo
echo RIG-START > /dev/ttyS0
sh=/bin/sh; [ -x /run/root/bin/bash ] && sh=/bin/bash
# Through a pipe, as under CI: the command's output is not a terminal.  The root
# is moved onto / in a mount namespace of the command's own (as switch_root does),
# not entered with chroot: a chrooted process may not create user namespaces, and
# passt (--net user) and virtiofsd sandbox themselves in one.
{ unshare -m /bin/sh -c "cd /run/root && mount --move . / && exec chroot . $sh -c '. /job/env; \
cd \"\$RIG_CWD\" && exec $sh /job/cmd.sh'" </dev/null 2>&1; echo $? > /run/rc; } \
    | cat > /dev/ttyS1
rc=$(cat /run/rc)
sync
echo "RIG-RC=$rc" > /dev/ttyS0
poweroff -f
""".replace("@HEARTBEAT@", str(HEARTBEAT_SECONDS))


class Unavailable(Exception):
    """The rig can't run on this host (said in one line)."""


def rig_kernel() -> str:
    """The newest installed Debian kernel that has kvm_amd and an image in /boot."""
    found = []
    for release in os.listdir("/lib/modules") if os.path.isdir("/lib/modules") else ():
        if Path(f"/boot/vmlinuz-{release}").exists() and _modules(release, ("kvm_amd",)):
            found.append(release)
    if not found:
        raise Unavailable("no kernel with kvm_amd in /boot and /lib/modules "
                          "(apt-get install linux-image-amd64)")
    return sorted(found, key=lambda r: [int(x) if x.isdigit() else x
                                        for x in re.split(r"[.-]", r)])[-1]


def _modules(release: str, wanted: tuple[str, ...]) -> ModuleSet | None:
    """The modules of ``wanted`` with their dependencies, in load order (None: missing)."""
    try:
        found = find_modules(f"/lib/modules/{release}", list(wanted))
    except PyvmmError:
        return None
    return None if found.missing else found


def rig_initramfs(release: str) -> Path:
    """The rig's initramfs (busybox, modules, init), built once per kernel and init."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise Unavailable("no /bin/busybox (apt-get install busybox-static)")
    modules = _modules(release, MODULES)
    if modules is None:
        raise Unavailable(f"kernel {release} lacks one of the modules {', '.join(MODULES)}")
    key = hashlib.sha256("\n".join([release, INIT, *(p for _, p in modules.files)]).encode()
                         + busybox.read_bytes()).hexdigest()[:16]
    path = CACHE / f"initramfs-{release}-{key}.cpio.gz"
    if path.exists():
        return path
    started = time.monotonic()
    print(f"rig: building its initramfs (busybox, the modules of {release}) ...",
          file=sys.stderr, flush=True)
    archive = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "mnt", "job", "run", "lib", "lib/modules"):
        archive.directory(directory)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in ("sh", "mount", "insmod", "mkdir", "chroot", "unshare", "poweroff", "cat",
                   "echo", "sleep", "stty", "sync"):
        archive.symlink(f"bin/{applet}", "busybox")
    for name, host_path in modules.files:
        archive.file(f"lib/modules/{name}", read_module(host_path))
    archive.file("lib/modules/order", "".join(f"{name}\n" for name, _ in modules.files).encode())
    archive.file("init", INIT.encode(), mode=0o755)
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=CACHE, prefix=".initramfs-")
    with os.fdopen(fd, "wb") as file:
        file.write(gzip.compress(archive.finish(), compresslevel=1))
    os.replace(tmp, path)
    print(f"rig: built {path} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return path


def rig_qemu(system: bool = False) -> tuple[str, str]:
    """The rig's QEMU and its kind: the patched build if built (and not ``system``), else the system's.

    The path is the one ``scripts/rig-qemu/build.sh`` installs to: keyed by a
    hash of that script and its patch, so an edit to either means "not built".
    """
    key = hashlib.sha256(b"".join(p.read_bytes() for p in RIG_QEMU_SOURCES)).hexdigest()[:16]
    patched = CACHE / f"qemu-{key}" / "bin" / "qemu-system-x86_64"
    if not system and os.access(patched, os.X_OK):
        return str(patched), "patched"
    system_qemu = shutil.which("qemu-system-x86_64")
    if system_qemu is None:
        raise Unavailable("no qemu-system-x86_64 (apt-get install qemu-system-x86)")
    return system_qemu, "system"


class Session:
    """One boot of the rig running the job; says how it ended."""

    #: Seconds to wait for the console after each nudge to a frozen rig.
    NUDGE_WAIT = 15.0
    #: What is tried, in order, on a frozen rig: a name and its monitor commands.
    #: A key press is an interrupt through the IOAPIC (the keyboard's IRQ 1), which makes
    #: QEMU's APIC look at its IRR again: it woke the freeze seen most (the timer's vector
    #: in IRR, the CPU halted), which neither of the others did, so it goes first.
    NUDGES = (("a key press", ("sendkey shift",)), ("an NMI", ("nmi",)),
              ("stop/cont", ("stop", "cont")))

    def __init__(self, args: argparse.Namespace, release: str, initramfs: Path,
                 job: Path, qemu: str = "qemu-system-x86_64") -> None:
        self.args, self.release, self.initramfs, self.job = args, release, initramfs, job
        self.qemu = qemu
        self.console = bytearray()      # the rig kernel's console (ttyS0)
        self.status: int | None = None  # the command's, from RIG-RC=
        self.failure: str | None = None  # the rig's own failure, if any
        #: The nudge that woke a freeze while the command ran (the first one), if any.
        self.woken_by: str | None = None
        self.timed_out = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.monitor = Path("/nonexistent")  # QEMU's monitor socket, in a private dir run() makes

    def command(self) -> list[str]:
        a = self.args
        return [
            self.qemu, "-accel", f"tcg,thread={a.tcg_threads}",
            "-cpu", "EPYC-Rome,+svm,+npt", "-smp", str(a.cpus), "-m", a.memory,
            "-M", "q35", "-display", "none", "-no-reboot",
            "-monitor", f"unix:{self.monitor},server=on,wait=off",
            "-kernel", f"/boot/vmlinuz-{self.release}", "-initrd", str(self.initramfs),
            "-append", "console=ttyS0 quiet oops=panic softlockup_panic=1 panic=-1",
            "-serial", "stdio", "-serial", f"file:{self.job / 'output'}",
            "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={self.job},mount_tag=job,security_model=none",
        ]

    def run(self) -> None:
        (self.job / "output").write_bytes(b"")
        self.monitor = Path(tempfile.mkdtemp(prefix="pyvmm-rig-")) / "monitor"
        try:
            proc = self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except BaseException:
            shutil.rmtree(self.monitor.parent, ignore_errors=True)
            raise
        assert proc.stdout is not None
        print(f"rig: booting Debian's {self.release} in QEMU (TCG, {self.args.cpus} CPU) ...",
              file=sys.stderr, flush=True)
        output = open(self.job / "output", "rb")
        started = last_heard = time.monotonic()
        running = False  # the job has started: the watchdog applies
        pending = b""
        nudged = 0       # nudges sent since the console last spoke
        where = ""       # the frozen CPU's registers, in brief
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                self._stream(output)
                now = time.monotonic()
                if ready:
                    data = os.read(proc.stdout.fileno(), 65536)
                    if not data:
                        break
                    if nudged:
                        woken_by = self.NUDGES[nudged - 1][0]
                        print(f"rig: the rig froze ({where}); {woken_by} woke it",
                              file=sys.stderr)
                        self.woken_by = self.woken_by or woken_by
                        nudged = 0
                    last_heard = now
                    self.console += data
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._line(line)
                    if not running and b"RIG-START" in self.console:
                        running = True
                        print(f"rig: up in {now - started:.1f} s, running the command",
                              file=sys.stderr, flush=True)
                if self.failure or self.status is not None:
                    break
                if now - started > self.args.timeout:
                    self.timed_out = True
                    break
                if running and now - last_heard > self.args.watchdog + nudged * self.NUDGE_WAIT:
                    if nudged == len(self.NUDGES):
                        self.failure = (f"froze: nothing on its console for "
                                        f"{self.args.watchdog:.0f} s ({where}); none of "
                                        f"{', '.join(name for name, _ in self.NUDGES)} "
                                        "woke it")
                        break
                    if not nudged:
                        where = self._record_freeze()
                    for command in self.NUDGES[nudged][1]:
                        self._monitor(command)
                    nudged += 1
                if not running and now - started > self.args.boot_timeout:
                    self.failure = f"did not start the job within {self.args.boot_timeout:.0f} s"
                    break
            if self.status is not None:
                try:  # it powers off at once; wait a little for the last output
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._stream(output)
            output.close()
            shutil.rmtree(self.monitor.parent, ignore_errors=True)
        if self.status is None and not self.failure and not self.timed_out:
            self.failure = f"stopped without the command's status (qemu exit {proc.returncode})"
        if self.status and self.woken_by and not self.failure:
            # Frozen, the rig's clocks and timers stood still for the watchdog's time and
            # more, which a command that times or waits for things can't tell from its own
            # fault: its failure is not evidence, so the session counts as the rig's.
            self.failure = (f"froze while the command ran ({self.woken_by} woke it), and "
                            f"the command then failed (status {self.status}): not trusted")

    def _record_freeze(self) -> str:
        """The console went silent: save the rig's state; its registers in brief.

        Seen on the one-CPU rig: QEMU's TCG thread asleep while the rig's CPU
        has a timer interrupt pending and deliverable (IF set, vector above
        the PPR) and is not halted, as if a kick were lost; and the CPU halted
        with the timer's vector in the APIC's IRR (none in ISR), which neither
        an NMI nor stop/cont woke (tests/linux/test_snapshot_restore.py, 2026-12).  ``run`` then
        tries ``NUDGES``; if the console speaks again the session goes on and
        the freeze is reported, else the session has failed.
        """
        registers = self._monitor("info registers")
        (self.job / "rig-freeze.txt").write_text(
            registers + self._monitor("info lapic") + self._threads())
        return " ".join(re.findall(r"(?:RIP|RFL)=\S+|HLT=\d", registers)) or "no CPU state"

    def _threads(self) -> str:
        """QEMU's threads: name, state and where each sleeps in the host kernel."""
        assert self.proc is not None
        lines = []
        for task in sorted(Path(f"/proc/{self.proc.pid}/task").glob("*")):
            try:
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                lines.append(f"{task.name} {(task / 'comm').read_text().strip()} {state} "
                             f"{(task / 'wchan').read_text().strip()}")
            except OSError:
                continue
        return "\nQEMU threads:\n" + "\n".join(lines) + "\n"

    def _monitor(self, command: str) -> str:
        """One HMP command on the rig's QEMU monitor, and its reply."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(3)
                sock.connect(str(self.monitor))
                sock.sendall(command.encode() + b"\n")
                reply, deadline = b"", time.monotonic() + 3
                while time.monotonic() < deadline:
                    try:
                        chunk = sock.recv(65536)
                    except socket.timeout:
                        break
                    if not chunk:
                        break
                    reply += chunk
                    if reply.count(b"(qemu)") >= 2:
                        break
                return reply.decode(errors="replace")
        except OSError as exc:
            return f"(no monitor: {exc})"

    def _line(self, line: bytes) -> None:
        match = re.search(rb"RIG-RC=(\d+)", line)
        if match:
            self.status = int(match.group(1))
        elif FAILURE_PATTERNS.search(line):
            self.failure = line.decode(errors="replace").strip()

    @staticmethod
    def _stream(output: io.BufferedReader) -> None:
        data = output.read()
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def console_tail(self, lines: int = 15) -> str:
        text = self.console.decode(errors="replace").replace("\r", "")
        kept = [line for line in text.splitlines() if line.strip()
                and "RIG-HEARTBEAT" not in line and "TCG doesn't support" not in line]
        return "\n".join(kept[-lines:])


def write_job(job: Path, argv: list[str], qemu_kind: str = "system") -> None:
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    (job / "cmd.sh").write_text(command + "\n")
    carried = [name for name in os.environ
               if name in CARRIED_ENV or name.startswith(CARRIED_PREFIXES)]
    env = [f"export {name}={shlex.quote(os.environ[name])}" for name in sorted(carried)]
    env += [f"export RIG=1 RIG_JOB=/job RIG_QEMU={qemu_kind}", f"RIG_CWD={shlex.quote(os.getcwd())}"]
    (job / "env").write_text("\n".join(env) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rig.py", description="Run COMMAND where /dev/kvm is hardware-assisted (SVM) KVM.")
    parser.add_argument("-m", "--memory", default="4G", help="the rig's RAM (default 4G)")
    # One CPU: with two, the TCG threads really run in parallel and the rig
    # failed in 8 of 30 sessions on an idle host (1 in 30 with a core busy),
    # guests under both VMMs triple-faulting or hanging; with one, 0 in 15 and
    # every guest boot ok, the linux tests no slower (bench/rig_health.py).
    parser.add_argument("-c", "--cpus", type=int, default=1, help="the rig's CPUs (default 1)")
    parser.add_argument("--tcg-threads", choices=("multi", "single"), default="multi",
                        help="QEMU TCG threading (default multi)")
    parser.add_argument("-t", "--timeout", type=float, default=1800,
                        help="seconds the command may run (exit 124 past it)")
    parser.add_argument("--watchdog", type=float, default=30,
                        help="seconds without the rig's heartbeat that count as a freeze")
    parser.add_argument("--boot-timeout", type=float, default=120,
                        help="seconds for the rig to boot and start the command")
    parser.add_argument("--retries", type=int, default=1,
                        help="new sessions after a rig failure (default 1)")
    parser.add_argument("--job", type=Path, help="the shared job directory (kept; default a "
                        "private temporary one, removed)")
    parser.add_argument("--system-qemu", action="store_true",
                        help="run the system's QEMU even if the patched one is built")
    parser.add_argument("--no-compile", action="store_true",
                        help="don't byte-compile the checkout first")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given (rig.py [options] -- COMMAND)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        qemu, qemu_kind = rig_qemu(args.system_qemu)
        release = rig_kernel()
        initramfs = rig_initramfs(release)
    except Unavailable as exc:
        print(f"rig: can't run here: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if not args.no_compile:
        compileall.compile_dir(str(REPO / "pyvmm"), quiet=1)
        compileall.compile_dir(str(REPO / "tests"), quiet=1)
    job = args.job or Path(tempfile.mkdtemp(prefix="pyvmm-rig-job."))
    job.mkdir(parents=True, exist_ok=True)
    write_job(job, args.command, qemu_kind)
    if qemu_kind == "patched":
        print(f"rig: QEMU: patched for nested breakpoints ({qemu})", file=sys.stderr)
    else:
        print(f"rig: QEMU: the system's ({qemu}): a nested guest's breakpoints don't fire "
              "(bash scripts/rig-qemu/build.sh builds the patched one)", file=sys.stderr)
    # A SIGTERM (CI's timeout) should still kill QEMU through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for attempt in range(1 + max(0, args.retries)):
            session = Session(args, release, initramfs, job, qemu)
            session.run()
            if session.timed_out:
                print(f"rig: the command ran past --timeout {args.timeout:.0f} s",
                      file=sys.stderr)
                return EXIT_TIMEOUT
            if session.failure is None:
                assert session.status is not None
                return session.status
            print(f"rig: FAILED (the rig itself, not the command; attempt {attempt + 1}): "
                  f"{session.failure}\nrig: its console ended:\n{session.console_tail()}",
                  file=sys.stderr)
        return EXIT_RIG_FAILED
    finally:
        if args.job is None:
            shutil.rmtree(job, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
