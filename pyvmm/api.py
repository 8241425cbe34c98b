"""pyvmm as a library: ``with pyvmm.Machine(kernel=..., initrd=...) as vm: ...``.

A test or a script runs guests in its own process and gets Python objects
back: the console as it comes (``vm.console.expect``), the guest's RAM and
registers, dumps, and the exit status ``pyvmm run`` would have reported.
Several machines can run at once, each started from any thread (once the
first has been started, or this module imported, on the main thread: see
``pyvmm.vcpu.runner.ensure_kick_handler``).

The machine is built when the ``Machine`` is made (bad options and images
raise ``pyvmm.errors.PyvmmError`` there), runs on a thread of its own after
``start``, and releases everything (vCPU threads, fds, guest RAM) at
``stop``, which ``with`` calls however the block ends.  It installs no
signal handlers: a Ctrl-C in a test stops the test, and ``with`` the guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Sequence

from pyvmm.vmm.builder import build_machine
from pyvmm.config.machine import MachineConfig, config_from_options
from pyvmm.errors import SEE_CHECK, HostError
from pyvmm.exitstatus import StopReason
from pyvmm.console.guest import Console
from pyvmm.memory import GuestMemory
from pyvmm.vcpu.runner import ensure_kick_handler

if TYPE_CHECKING:
    from pyvmm.devices.virtio.ports import Port
    from pyvmm.dump.state import VcpuRegisters
    from pyvmm.snapshot.restore import Snapshot
    from pyvmm.snapshot.save import SnapshotInfo

__all__ = ["Machine", "Outcome", "Console", "run_command"]

#: How long ``stop`` waits for the machine to wind down (flushes, dumps).
STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Outcome:
    """How a run ended: ``status`` as ``pyvmm run`` exits, ``reason`` in words."""

    #: The exit status the CLI reports for the same stop (0, 2N+1, 8, 124, ...).
    status: int
    #: Why the machine stopped, as the CLI's last line says it.
    reason: str
    #: A short name for it: poweroff, reboot, debug-exit, timeout, panic, stop, ...
    kind: str

    @classmethod
    def of(cls, reason: StopReason) -> "Outcome":
        return cls(int(reason.status), reason.message, reason.kind)


class Machine:
    """A VM in this process: ``Machine(kernel=..., ...)`` or ``Machine(config)``.

    Options are ``pyvmm run``'s, by their schema names: ``kernel``, ``initrd``,
    ``append``, ``memory`` (bytes, or a size such as ``"512M"``), ``cpus``,
    ``timeout``, ``cpu``, ``drives`` and ``shares`` (specs as on the command
    line, or ``DriveConfig`` / ``ShareConfig``), ``virtio_console``,
    ``virtio_announce``, ``acpi``, ``dump``, ``dump_on``, ``control``,
    ``emulation_assist``, ``vsock`` (the guest's CID).  ``Machine.command``
    makes a command-mode guest whose ``run`` runs commands in it.
    """

    def __init__(self, config: MachineConfig | None = None, /, **options: Any) -> None:
        if config is None:
            config = config_from_options(**options)
        elif options:
            raise TypeError("Machine() takes a MachineConfig or options, not both")
        self._build(config, None)

    @classmethod
    def restore(cls, path: str | os.PathLike[str], **overrides: Any) -> "Machine":
        """A new machine from the snapshot in directory ``path`` (``vm.snapshot``), not started.

        Its RAM is the snapshot's memory file mapped copy-on-write, so many
        machines restored from one snapshot share the pages none of them wrote.
        ``overrides`` are per-run options only (``timeout``, ``control``, ``dump``,
        ``dump_on``, ``gdb``, ``gdb_wait``), and ``snapshot=True``: each writable
        disk under a throwaway overlay, so clones write their own.  Its disk
        images must be as they were at the snapshot (``changed_disks=True``
        takes them anyway).  A damaged snapshot, one of another version or from
        a CPU with features this host lacks raises ``PyvmmError``.  The guest's
        clocks are moved on here and run with the host's from then, so a clone
        started later starts at the host's time.
        """
        from pyvmm.snapshot.restore import load_snapshot

        changed_disks = bool(overrides.pop("changed_disks", False))
        snapshot = load_snapshot(os.fspath(path), changed_disks, **overrides)
        machine = cls.__new__(cls)
        machine._build(snapshot.config, snapshot)
        return machine

    @classmethod
    def command(cls, cmd: str | Sequence[str] = ("sleep", "infinity"), *, rw: bool = False,
                modules: str | None = None, user: str | None = None,
                **options: Any) -> "Machine":
        """A command-mode guest (as ``run_command``: the host's files, you, this directory)
        running ``cmd``, not started; while it runs, ``vm.run(...)`` runs more commands in it.

        It reaches them over a vsock of its own (``vsock=CID`` chooses its
        address; else the first free one), so it needs /dev/vhost-vsock.
        ``cmd``'s own output is kept in ``command_stdout`` / ``command_stderr``;
        the machine stops when ``cmd`` ends (default: never, until ``stop``).
        """
        from pyvmm.command.run import Streams, prepare
        from pyvmm.config.command import CommandOptions
        from pyvmm.devices.virtio.ports import PortsDevice
        from pyvmm.vhost.vsock import DEVICE

        argv = ("sh", "-c", cmd) if isinstance(cmd, str) else tuple(cmd)
        config = config_from_options(**options)
        private = tempfile.mkdtemp(prefix="pyvmm-run-")
        try:
            config = prepare(config, argv, CommandOptions(rw=rw, modules=modules, user=user),
                             private, options.get("append"), want_vsock=True)
            if config.vsock is None and not config.vsock_auto:
                raise HostError(f"Machine.command reaches its guest over vsock: {DEVICE} "
                                f"can't be opened here (modprobe vhost_vsock){SEE_CHECK}")
            machine = cls.__new__(cls)
            stdout, stderr = bytearray(), bytearray()
            streams = Streams(stdout=stdout.extend, stderr=stderr.extend, stdin=b"")
            machine._build(config, None, streams.ports)
            machine.command_stdout, machine.command_stderr = stdout, stderr
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
        machine._private = private
        device = machine._machine.virtio_device(PortsDevice)
        assert device is not None
        streams.start_stdin(device)
        return machine

    def _build(self, config: MachineConfig, snapshot: Snapshot | None,
               ports: Sequence[Port] = ()) -> None:
        self.config = config
        #: The guest's console: serial and virtio console output, and its input.
        self.console = Console()
        try:
            self._machine = build_machine(config, self.console.machine_side, ports,
                                          snapshot=snapshot)
        except BaseException:
            self.console.close()
            raise
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self._closed = False
        #: What the main command of a ``Machine.command`` guest wrote (as it comes).
        self.command_stdout = bytearray()
        self.command_stderr = bytearray()
        #: The directory of a ``Machine.command`` guest's initramfs, removed at ``stop``.
        self._private: str | None = None

    # -- running ----------------------------------------------------------------------

    def start(self) -> "Machine":
        """Run the guest on a thread of its own; return at once."""
        if self._thread is not None or self._closed:
            raise RuntimeError("a Machine runs once: make a new one to boot again")
        ensure_kick_handler()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"pyvmm-{os.path.basename(self.config.kernel)}")
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            reason = self._machine.run()
        except BaseException as exc:  # run() reports its own; this is the last resort
            reason = StopReason.vmm_error(f"the machine failed: {exc}")
        self._outcome = Outcome.of(reason)
        self.console.machine_stopped(reason.message)

    @property
    def running(self) -> bool:
        """Started and not yet stopped."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> Outcome:
        """Wait until the guest stops; how it ended.  ``TimeoutError`` if it runs on."""
        if self._thread is None:
            raise RuntimeError("the machine was not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the guest still runs after {timeout:g} s")
        assert self._outcome is not None
        return self._outcome

    def stop(self, timeout: float = STOP_SECONDS) -> Outcome:
        """Stop the guest if it runs, and release the machine; how it ended.  Idempotent."""
        if self._thread is None:
            self._outcome = self._outcome or Outcome.of(
                StopReason.stopped("stopped before it was started"))
        else:
            self._machine.request_stop(StopReason.stopped())
            self._thread.join(timeout)
            if self._thread.is_alive():  # should not happen: leave it rather than crash it
                raise TimeoutError(f"the machine did not stop within {timeout:g} s")
        self._close()
        assert self._outcome is not None
        return self._outcome

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.console.machine_stopped("closed")
            self._machine.close()
            self.console.close()
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)

    def __enter__(self) -> "Machine":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- looking inside --------------------------------------------------------------

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM by guest-physical address: ``vm.memory.read(gpa, n)`` (until ``stop``)."""
        self._check_open()
        return self._machine.memory

    def registers(self, cpu: int = 0) -> VcpuRegisters:
        """vCPU ``cpu``'s registers (``.regs['rip']``, ``.control['cr3']``, ...).

        A running guest is paused for the read, as for a live dump.
        """
        self._check_open()
        return self._machine.registers(cpu)

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write an ELF core of the guest to ``path`` (``pyvmm inspect`` and gdb read it).

        A running guest is paused while it is written, then runs on.
        """
        self._check_open()
        if self.running:
            self._machine.live_dump(os.fspath(path))
            return
        from pyvmm.dump.capture import dump_machine

        dump_machine(os.fspath(path), self._machine.memory, self._machine.vcpus,
                     self._machine.stop_reason)

    def snapshot(self, path: str | os.PathLike[str], stop: bool = False) -> SnapshotInfo:
        """Write a snapshot of the guest to directory ``path`` (made if missing, owner-only).

        The guest is paused while its state and RAM are written, then runs on
        (``stop``: it stops, as ``stop()`` would).  ``Machine.restore(path)`` makes
        new machines from it.  Raw disks pyvmm serves are named, not copied (a
        restore checks they did not change); shares, disks qemu-storage-daemon
        serves and command mode are refused (``SnapshotError``).
        """
        self._check_open()
        return self._machine.snapshot(os.fspath(path), stop)

    def run(self, cmd: str | Sequence[str], *, input: bytes | str = b"",
            timeout: float | None = None, check: bool = False,
            wait: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        """Run ``cmd`` in this running guest, as ``subprocess.run`` runs it here.

        For a ``Machine.command`` guest (or any whose guest runs pyvmm's exec
        agent on its vsock): ``cmd`` is an argv or a string for ``sh -c``;
        ``input`` is its stdin; stdout, stderr and the return code come back
        apart.  ``wait`` is how long to keep trying while the guest still
        boots.  Past ``timeout`` the command is killed and
        ``subprocess.TimeoutExpired`` raised; with ``check``,
        ``CalledProcessError`` for a non-zero status.  ``ExecError`` (a
        ``PyvmmError``) when it could not be run.
        """
        from pyvmm.command.exec import ExecError, ExecTimeout, exec_in_guest

        self._check_open()
        argv = ("sh", "-c", cmd) if isinstance(cmd, str) else tuple(cmd)
        cid = self._machine.vsock_cid
        if cid is None:
            raise ExecError("this machine has no vsock (make it with Machine.command, "
                            "or give vsock=CID)")
        if not self.running:
            raise ExecError("the machine is not running")
        stdout, stderr = bytearray(), bytearray()
        data = input.encode() if isinstance(input, str) else bytes(input)
        try:
            status = exec_in_guest(cid, argv, [data] if data else [], stdout.extend,
                                   stderr.extend, wait=wait, timeout=timeout)
        except ExecTimeout:
            raise subprocess.TimeoutExpired(list(argv), timeout or 0, bytes(stdout),
                                            bytes(stderr)) from None
        result = subprocess.CompletedProcess(list(argv), status, bytes(stdout), bytes(stderr))
        if check:
            result.check_returncode()
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the machine is stopped and released")


def run_command(cmd: str | Sequence[str], *, input: bytes | str = b"",
                timeout: float | None = None, check: bool = False, rw: bool = False,
                modules: str | None = None, user: str | None = None,
                **options: Any) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` in a guest on the host's files, as ``subprocess.run`` runs it here.

    The library's ``pyvmm run -k KERNEL -- CMD`` (command mode, README):
    the guest's root is the host's ``/`` (a tmpfs overlay keeps its writes
    unless ``rw``), the command runs as you in this directory, gets
    ``input`` on its stdin, and its stdout and stderr come back apart and
    byte-exact.  ``cmd`` is an argv, or a string for ``sh -c``.  The return
    code is the command's, or 255 when the guest or pyvmm failed first (its
    one line then ends ``stderr``).  Past ``timeout`` seconds it raises
    ``subprocess.TimeoutExpired``; with ``check``, ``CalledProcessError`` for
    a non-zero status.  Other options are ``Machine``'s (``kernel``,
    ``memory``, ``cpus``, ``shares``, ``append``, ...).  Needs hardware KVM;
    bad options and hosts raise ``PyvmmError``.
    """
    from pyvmm.command.run import FAILED, Streams
    from pyvmm.command.run import run_command as run_in_guest
    from pyvmm.config.command import CommandOptions

    argv = ("sh", "-c", cmd) if isinstance(cmd, str) else tuple(cmd)
    config = config_from_options(timeout=timeout, **options)
    stdout, stderr = bytearray(), bytearray()
    streams = Streams(stdout=stdout.extend, stderr=stderr.extend,
                      stdin=input.encode() if isinstance(input, str) else bytes(input))
    status = run_in_guest(config, argv, CommandOptions(rw=rw, modules=modules, user=user),
                          user_append=options.get("append"), streams=streams)
    if streams.error is not None:
        stderr += streams.error.encode() + b"\n"
    if status == FAILED and streams.reason is not None and streams.reason.kind == "timeout":
        raise subprocess.TimeoutExpired(list(argv), timeout or 0, bytes(stdout), bytes(stderr))
    result = subprocess.CompletedProcess(list(argv), status, bytes(stdout), bytes(stderr))
    if check:
        result.check_returncode()
    return result


if threading.current_thread() is threading.main_thread():
    ensure_kick_handler()  # so machines can start from other threads later
