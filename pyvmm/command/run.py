"""Command mode: ``pyvmm run -k KERNEL -- CMD ARGS``, a command in a guest on the host's files.

The guest's root is the host's ``/`` over virtio-fs (read-only under a tmpfs
overlay, or written through with ``--rw``).  Its /init (pyvmm/command/initramfs)
runs CMD as the calling user in the calling directory.  CMD's stdin, stdout
and stderr are pipes in the guest, relayed to ports of a multiport virtio
console (binary-safe, apart, EOF passed on); a fourth port carries its exit status back, so pyvmm exits
with it.  The kernel's console goes to a bounded in-memory log (to stderr
as well with ``-v``), whose last telling line explains a guest that fails
first: then the status is 255, as ssh and vng report their own failures.
A guest with a vsock (``--vsock``, or its own where ``--control`` is given
and /dev/vhost-vsock opens) also runs the exec agent, through which
``pyvmm exec`` runs more commands in it (``pyvmm.command.exec``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import select
import shutil
import socket
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from pyvmm.vmm.builder import build_machine
from pyvmm.config.command import CommandOptions
from pyvmm.config.machine import MachineConfig
from pyvmm.config.network import NetConfig, nics
from pyvmm.host import environment
from pyvmm.config.tables import ShareConfig
from pyvmm.console.host import HostConsole
from pyvmm.devices.virtio.ports import Port, PortsDevice
from pyvmm.errors import SEE_CHECK, ConfigError, HostError, PyvmmError
from pyvmm.exitstatus import StopReason
from pyvmm.command.initramfs.agent import AGENT_PORT
from pyvmm.command.initramfs.build import (Job, base_archive, device_modules, job_archive,
                                           modules_for)
from pyvmm.kvm import system as kvm_system  # a module: tests stand in for is_pvm_host
from pyvmm.vmm.signals import signals_stop

if TYPE_CHECKING:
    from pyvmm.vcpu.stats import RunStats

#: pyvmm's status when it, or the guest, fails before the command ends.
FAILED = 255
#: The kernel command line of command mode (the user's --append goes after it).
CMDLINE = "console=ttyS0 reboot=k panic=-1 quiet loglevel=2 rdinit=/init"
STDIN, STDOUT, STDERR, STATUS = range(4)
PORT_NAMES = ("pyvmm.stdin", "pyvmm.stdout", "pyvmm.stderr", "pyvmm.status")
ROOT_TAG = "pyvmm.root"
#: Kernel log kept for explaining a failure, and the status port's limit.
LOG_LIMIT = 64 << 10
STATUS_LIMIT = 4096
#: Environment passed to the command.
CARRIED_ENV = ("PATH", "HOME", "TERM", "USER", "LOGNAME", "LANG")
#: Lines of the kernel log that explain a guest stopping early, most telling first.
TELLING = ("pyvmm-init: error:", "Kernel panic", "BUG:", "Oops")


class LogConsole(HostConsole):
    """The guest's serial console kept in a bounded log (and shown on stderr with -v)."""

    def __init__(self, verbose: bool) -> None:
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        super().__init__(on_quit=lambda: None, stdin_fd=self._null,
                         stdout_fd=2 if verbose else self._null)
        self.verbose = verbose
        self.log = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.log += data
        del self.log[:-LOG_LIMIT]
        if self.verbose:
            super().write(data)

    def close(self) -> None:
        os.close(self._null)

    def reason(self) -> str | None:
        lines = self.log.decode(errors="replace").splitlines()
        for marker in TELLING:
            for line in reversed(lines):
                if marker in line:
                    text = line[line.index(marker):].strip()
                    return text.removeprefix("pyvmm-init: error: ")
        return None


def _fd_writer(fd: int) -> Callable[[memoryview], None]:
    """Whole writes to ``fd``; a closed reader (EPIPE) makes further output vanish."""
    broken = [False]

    def write(view: memoryview) -> None:
        while view and not broken[0]:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [], 1.0)
            except OSError:
                broken[0] = True
    return write


class Streams:
    """The four ports and the thread that feeds the command's input to the first.

    By default (``pyvmm run``) the command's streams are ours: fds 0, 1 and 2.
    The library (``pyvmm.run_command``) gives its input as bytes and collects
    stdout and stderr; pyvmm's own error line then goes to ``error``.
    """

    def __init__(self, stdout: Callable[[memoryview], None] | None = None,
                 stderr: Callable[[memoryview], None] | None = None,
                 stdin: bytes | None = None) -> None:
        self.status = bytearray()
        self._stdin = stdin
        #: pyvmm's one line when it, or the guest, failed before the command ended.
        self.error: str | None = None
        #: Why the machine stopped (set once it has).
        self.reason: StopReason | None = None

        def keep_status(view: memoryview) -> None:
            self.status += view[:max(0, STATUS_LIMIT - len(self.status))]  # no whole copy

        #: What the machine's stream ports device is made of (one port per stream).
        self.ports = (Port(PORT_NAMES[STDIN]),
                      Port(PORT_NAMES[STDOUT], stdout or _fd_writer(1)),
                      Port(PORT_NAMES[STDERR], stderr or _fd_writer(2)),
                      Port(PORT_NAMES[STATUS], keep_status))
        self.device: PortsDevice | None = None

    def start_stdin(self, device: PortsDevice) -> None:
        """Feed the command's input to ``device``, the machine's ports made from ``ports``."""
        self.device = device
        threading.Thread(target=self._feed, args=(device,), name="stdin", daemon=True).start()

    def _chunks(self) -> Iterator[bytes]:
        if self._stdin is not None:
            yield self._stdin
            return
        while data := os.read(0, 65536):
            yield data

    def _feed(self, device: PortsDevice) -> None:
        try:
            for data in self._chunks():
                if data:
                    device.enqueue_input(STDIN, data)
        except OSError:
            pass  # no stdin, or it failed: the guest sees end of file
        except PyvmmError:
            return  # the guest broke its queue; the transport reports it
        device.end_input(STDIN)

    def outcome(self) -> tuple[int | None, str | None]:
        """(the command's status, or an error the guest's init reported)."""
        for line in self.status.decode(errors="replace").splitlines():
            word, _, rest = line.partition(" ")
            if word == "status" and rest.strip().isdigit():
                return int(rest) & 0xFF, None
            if word == "error":
                return None, rest.strip()
        return None, None


def make_job(argv: tuple[str, ...], rw: bool, shares: tuple[ShareConfig, ...],
             user: str | None = None, agent: bool = False,
             nets: Sequence[NetConfig] = ()) -> Job:
    """The job: the caller's directory, identity and environment (or ``user``'s); with
    ``agent``, the exec agent is run by the host's python3; the NICs /init only brings
    up (taps: no DHCP server of ours behind them)."""
    env = environment.carried(CARRIED_ENV)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    uid, gid = os.geteuid(), os.getegid()
    groups = tuple(g for g in os.getgroups() if g != gid)
    if user is not None:
        uid, gid, groups, home, name = _lookup_user(user)
        env.update({"HOME": home, "USER": name, "LOGNAME": name})
    mounts = tuple((share.tag, os.path.abspath(share.path), share.readonly) for share in shares)
    env_binary = _host_tool("env", "coreutils")
    setpriv_binary = _host_tool("setpriv", "util-linux") if uid or gid else ""
    agent_python = _host_tool("python3", "python3") if agent else ""
    link_only = tuple(nic.guest_mac(index).hex(":")
                      for index, nic in enumerate(nics(nets)) if nic.type == "tap")
    return Job(argv, os.getcwd(), uid, gid, groups, tuple(env.items()), rw, mounts,
               env_binary, setpriv_binary, socket.gethostname(), agent_python, AGENT_PORT,
               link_only_macs=link_only)


def _host_tool(name: str, package: str) -> str:
    """The absolute path of a host program the job runs (the guest sees the host's /)."""
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise ConfigError(f"command mode needs {name} on the host (install {package})")
    return os.path.abspath(path)


def _lookup_user(user: str) -> tuple[int, int, tuple[int, ...], str, str]:
    """--user NAME or UID[:GID]: (uid, gid, supplementary groups, home, name)."""
    name, _, group = user.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if not name.isdigit():
            raise ConfigError(f"--user {user}: no such user") from None
        uid = int(name)
        return uid, int(group) if group.isdigit() else uid, (), "/", name
    if group and not group.isdigit():
        raise ConfigError(f"--user {user}: give the group as a number")
    gid = int(group) if group else entry.pw_gid
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, gid) if g != gid)
    return entry.pw_uid, gid, groups, entry.pw_dir, entry.pw_name


def command_config(config: MachineConfig, rw: bool, initrd: str, user_append: str | None) -> \
        MachineConfig:
    """The machine of command mode: root share first, the stream ports, no hvc0."""
    root = ShareConfig("/", ROOT_TAG, readonly=not rw)
    cmdline = CMDLINE if not user_append else f"{CMDLINE} {user_append}"
    return dataclasses.replace(config, initrd=initrd, cmdline=cmdline,
                               shares=(root,) + config.shares, stdio_ports=True,
                               virtio_console=False)


def run_command(config: MachineConfig, argv: tuple[str, ...], options: CommandOptions, *,
                user_append: str | None = None, verbose: bool = False,
                streams: Streams | None = None, stats: RunStats | None = None) -> int:
    """Run ``argv`` in a guest; return its status (255 and a line on stderr if we fail first).

    ``user_append`` is what the user added to the kernel command line;
    ``verbose`` shows the guest's kernel log.  ``streams`` given (the
    library): its input and writers instead of our fds, pyvmm's error line in
    ``streams.error``, and no signal handlers.
    """
    if config.initrd:
        raise ConfigError("command mode builds its own initramfs: leave out --initrd")
    if kvm_system.is_pvm_host():
        raise HostError(f"command mode needs hardware KVM: {kvm_system.PVM_NO_USER_SPACE}"
                        f"{SEE_CHECK}; {kvm_system.RUN_LINUX_ELSEWHERE}")
    private = tempfile.mkdtemp(prefix="pyvmm-run-")
    console = LogConsole(verbose)
    try:
        machine_config = prepare(config, argv, options, private, user_append)
        return _run(machine_config, console, streams, stats)
    finally:
        console.close()
        shutil.rmtree(private, ignore_errors=True)


def prepare(config: MachineConfig, argv: tuple[str, ...], options: CommandOptions,
            private: str, user_append: str | None, want_vsock: bool = False) -> MachineConfig:
    """The command-mode machine of ``config``: its initramfs written into ``private``.

    The guest gets a vsock of its own (so ``pyvmm exec`` reaches it) with
    ``--control`` or ``want_vsock``, where /dev/vhost-vsock can be opened.
    """
    from pyvmm.vhost.vsock import usable as vhost_vsock_usable

    if config.vsock is None and (config.control or want_vsock) and vhost_vsock_usable():
        config = dataclasses.replace(config, vsock_auto=True)
    with open(config.kernel, "rb") as stream:
        head = stream.read(1 << 16)
    base = base_archive(modules_for(head, options.modules, device_modules(config)))
    job = make_job(argv, options.rw, config.shares, options.user,
                   agent=config.vsock is not None or config.vsock_auto, nets=config.nets)
    initrd = os.path.join(private, "initrd.cpio")
    fd = os.open(initrd, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(base)
        stream.write(job_archive(job))
    return command_config(config, options.rw, initrd, user_append)


def _run(config: MachineConfig, console: LogConsole, library: Streams | None,
         stats: RunStats | None = None) -> int:
    streams = library or Streams()
    machine = build_machine(config, console, streams.ports, stats=stats)
    device = machine.virtio_device(PortsDevice)
    assert device is not None  # config.stdio_ports
    streams.start_stdin(device)
    with signals_stop(machine) if library is None else contextlib.nullcontext():
        reason = machine.run()
    if stats is not None:
        stats.note_stop(machine.stop_requested_at)
    machine.close()
    streams.reason = reason
    status, error = streams.outcome()
    if status is not None:
        return status
    if error is None:
        error = _explain(reason, console)
    streams.error = f"pyvmm: {error}"
    if library is None:
        print(streams.error, file=sys.stderr)
    if reason.kind == "signal":
        return reason.status
    return FAILED


def _explain(reason: StopReason, console: LogConsole) -> str:
    told = console.reason()
    if reason.kind in ("poweroff", "reboot", "debug-exit", "panic"):
        what = "the guest stopped before the command ended"
        return f"{what}: {told}" if told else f"{what} ({reason.message})"
    return f"{reason.message}" + (f"; the guest said: {told}" if told else "")
