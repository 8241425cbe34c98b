"""A built machine: its parts, run until the exit event says why it stopped.

``pyvmm.vmm.builder.build_machine`` assembles one, whole: every part is passed to
the constructor and nothing is set afterwards.  ``BuiltMachine.run`` starts the
vCPU runners (``pyvmm.vcpu.runner``: a thread each, KVM_RUN releases the
GIL) and runs the event loop on the calling thread (the console pump, device
eventfds, the control socket) until the exit event fires: poweroff, reset,
triple fault, timeout, a stop request, or an exception in any device or vCPU
code.  Then it stops the runners, flushes the console and the disks, writes
the dump asked for and returns the ``StopReason``.

The machine installs no signal handlers (but the vCPU kick's): a library
user may run it on any thread; ``pyvmm run`` maps signals to
``request_stop`` and ``request_live_dump`` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

from pyvmm.config.machine import MachineConfig
from pyvmm.console.host import HostConsole
from pyvmm.console.pump import ConsolePump
from pyvmm.errors import PyvmmError, describe
from pyvmm.eventloop import EventLoop
from pyvmm.vcpu.exit_event import ExitEvent
from pyvmm.exitstatus import StopReason
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.vcpu.runner import VcpuRunners, VcpuPhase

if TYPE_CHECKING:
    from pyvmm.vmm.control import ControlServer
    from pyvmm.devices.serial import Serial
    from pyvmm.devices.virtio.mmio import VirtioMmioTransport
    from pyvmm.dump.state import VcpuRegisters
    from pyvmm.arch.x86_64.cpuid import CpuidEntry
    from pyvmm.gdb.server import GdbServer
    from pyvmm.snapshot.save import SnapshotInfo, StatefulDevice
    from pyvmm.vcpu.stats import RunStats
    from pyvmm.vcpu.uart_fastpath import UartFastPath
    from pyvmm.vmm.disks import Disks

#: A kind of virtio device a caller looks for (``BuiltMachine.virtio_device``).
DeviceT = TypeVar("DeviceT")

log = logging.getLogger(__name__)

#: How long the VM teardown child waits for pyvmm to exit before it lets go anyway.
VM_TEARDOWN_WAIT_SECONDS = 10.0


class BuiltMachine:
    """A built VM, ready to run once; then ``close`` it (or ``close_at_exit``)."""

    def __init__(self, *, config: MachineConfig, kvm: Kvm, vm: Vm, memory: GuestMemory,
                 vcpus: Sequence[Vcpu], exit_event: ExitEvent, loop: EventLoop,
                 console: HostConsole, pump: ConsolePump, runners: VcpuRunners,
                 serial: Serial, uart_fast: UartFastPath | None,
                 virtio: Sequence[VirtioMmioTransport], owned_fds: Sequence[int],
                 closers: Sequence[Callable[[], None]], stats: RunStats | None,
                 assists: dict[str, int], gdb: GdbServer | None = None,
                 disks: Disks | None = None,
                 stateful: dict[str, StatefulDevice] | None = None,
                 cpuid: Sequence[Sequence[CpuidEntry]] = (),
                 on_closed: Callable[[], None] | None = None,
                 on_closing: Callable[[GuestMemory], None] | None = None) -> None:
        self.config = config
        #: Called at the end of ``close`` (not ``close_at_exit``): a restore's spare VM.
        self._on_closed = on_closed
        #: Called by ``close`` (not ``close_at_exit``) with the vCPUs stopped and guest RAM
        #: still mapped: a restore learns what its clone wrote.
        self._on_closing = on_closing
        self.kvm = kvm
        self.vm = vm
        self.memory = memory
        self.vcpus = tuple(vcpus)
        self.exit_event = exit_event
        self.loop = loop
        self.console = console
        self.pump = pump
        self.runners = runners
        self.serial = serial
        self.uart_fast = uart_fast
        self.virtio = tuple(virtio)
        #: eventfds made for ioeventfd/irqfd wiring, closed with the machine.
        self._owned_fds = tuple(owned_fds)
        #: Called by ``close`` after the devices: helper processes (virtiofsd) and the like.
        self._closers = list(closers)
        #: The drives and their qemu-storage-daemon (``carry_disks``).
        self.disks = disks
        self.stats = stats
        #: Instructions finished for a software-emulating KVM, by name (the runners count).
        self.assists = assists
        #: ``--gdb``'s listener and the machine as its target.
        self.gdb = gdb
        self._dump_pending = False
        #: One paused section at a time (a live dump and a register read may race).
        self._pause_lock = threading.Lock()
        self._control: ControlServer | None = None
        self._closed = False
        #: The devices besides virtio's whose state a snapshot keeps, by name.
        self.stateful = dict(stateful or {})
        #: Each vCPU's CPUID table as set (a snapshot keeps it).
        self.cpuid = [list(leaves) for leaves in cpuid]
        #: The thread running the event loop while ``run`` runs it (snapshots go there).
        self._loop_thread: threading.Thread | None = None
        self._devices_shut_down = False

    # -- events (any thread) ---------------------------------------------------------

    def virtio_device(self, kind: type[DeviceT]) -> DeviceT | None:
        """The machine's first virtio device of class ``kind`` (command mode's stream ports)."""
        return next((t.device for t in self.virtio if isinstance(t.device, kind)), None)

    @property
    def vsock_cid(self) -> int | None:
        """The guest's vsock address (``--vsock``, or command mode's own), if it has one."""
        from pyvmm.devices.virtio.vsock import VsockDevice

        device = self.virtio_device(VsockDevice)
        return device.guest_cid if device is not None else None

    def request_stop(self, reason: StopReason) -> None:
        """Stop the machine for ``reason`` unless it is already stopping."""
        self.exit_event.set(reason)

    @property
    def stop_reason(self) -> StopReason | None:
        return self.exit_event.reason

    @property
    def stop_requested_at(self) -> float | None:
        """perf_counter() when the first stop reason came (for --stats)."""
        return self.exit_event.requested_at

    def request_live_dump(self) -> None:
        """A live dump to the configured ``--dump`` on the event loop (SIGUSR1)."""
        self._dump_pending = True
        self.loop.wake()

    # -- inspecting -----------------------------------------------------------------------

    def live_dump(self, path: str) -> float:
        """Pause every vCPU, dump the guest to ``path``, resume; return the seconds taken."""
        from pyvmm.dump.capture import dump_machine

        start = time.monotonic()
        with self._pause_lock, self.runners.paused():
            dump_machine(path, self.memory, self.vcpus, None)
        return time.monotonic() - start

    def registers(self, cpu: int) -> VcpuRegisters:
        """vCPU ``cpu``'s registers as a dump records them (paused for the read if running)."""
        from pyvmm.dump.capture import vcpu_states

        if not 0 <= cpu < len(self.vcpus):
            raise IndexError(f"no vCPU {cpu}: the machine has {len(self.vcpus)}")
        with self._pause_lock, self.runners.paused():
            return vcpu_states([self.vcpus[cpu]])[0]

    def snapshot(self, directory: str, stop: bool = False) -> SnapshotInfo:
        """Write a snapshot of the guest to ``directory``; it runs on after (or stops).

        Taken on the event loop's thread with every vCPU paused, so no device
        work moves a queue between its state and RAM being saved (from another
        thread the request waits for the loop).  The console output the guest
        sent before it is written out first.
        """
        from pyvmm.snapshot import SnapshotError

        if self.exit_event.is_set():
            raise SnapshotError("the machine has stopped: nothing to snapshot")
        loop_thread = self._loop_thread
        if loop_thread is None or loop_thread is threading.current_thread():
            return self._snapshot_now(directory, stop)
        done = threading.Event()
        outcome: list = []

        def on_loop() -> None:
            try:
                outcome.append(self._snapshot_now(directory, stop))
            except BaseException as exc:  # noqa: BLE001 - raised on the asking thread
                outcome.append(exc)
            finally:
                done.set()
        self.loop.call_at(0, on_loop)
        while not done.wait(0.05):
            if self._loop_thread is None:
                raise SnapshotError("the machine stopped before its snapshot was taken")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _snapshot_now(self, directory: str, stop: bool) -> SnapshotInfo:
        from pyvmm.snapshot.save import save_snapshot

        with self._pause_lock, self.runners.paused(), _device_threads_paused(self.virtio):
            if self.uart_fast is not None:
                self.uart_fast.drain()  # coalesced THR writes are the UART's before it is saved
            self.pump.flush()
            info = save_snapshot(directory, config=self.config, kvm=self.kvm, vm=self.vm,
                                 vcpus=self.vcpus, cpuid=self.cpuid, memory=self.memory,
                                 devices=self.stateful, virtio=self.virtio)
            if stop:
                self.request_stop(StopReason.stopped(f"snapshot written to {directory}"))
        return info

    def _control_snapshot(self, directory: str, stop: bool) -> str:
        info = self.snapshot(directory, stop)
        return f"{info.seconds:.3f} {info.ram_bytes} {info.written_bytes}"

    # -- running ------------------------------------------------------------------------

    def run(self) -> StopReason:
        """Run the guest until it stops; return why.  Call once, on any thread."""
        self.console.start()
        self._loop_thread = threading.current_thread()
        try:
            self.pump.subscribe(self.loop)
            if self.config.control:
                from pyvmm.vmm.control import ControlServer

                self._control = ControlServer(self.config.control, self.live_dump,
                                              self._control_snapshot, self.vsock_cid)
                self.loop.add(self._control.fd, self._control.on_ready)
            if self.gdb is not None:
                self.gdb.subscribe(self.loop)
                if self.config.gdb_wait:
                    log.warning("waiting for gdb on %s", self.gdb.address)
            self.runners.start()
            deadline = None
            if self.config.timeout is not None:
                deadline = self._deadline(time.monotonic() + self.config.timeout)
            if not self.exit_event.is_set() and not self.loop.run(deadline, self._tick):
                self.request_stop(StopReason.timeout(self.config.timeout or 0))
        except Exception as exc:  # noqa: BLE001 - reported, then the VM stops
            log.debug("event loop failed:\n%s", traceback.format_exc())
            self.request_stop(StopReason.vmm_error(f"event loop: {describe(exc)}"))
        finally:
            self._loop_thread = None
            self._finish()
        reason = self.exit_event.reason
        assert reason is not None
        return reason

    def _deadline(self, due: float) -> Callable[[], float | None] | float:
        """``--timeout``'s deadline: later by the time gdb held the guest, none while it does."""
        gdb = self.gdb
        if gdb is None:
            return due
        target = gdb.target
        return lambda: None if target.holding else due + target.held_seconds()

    def _tick(self) -> float | None:
        if self._dump_pending:
            self._dump_pending = False
            self._dump_on_signal()
        return self.pump.tick()

    def _dump_on_signal(self) -> None:
        if self.config.dump and "signal" in self.config.dump_on:
            try:
                seconds = self.live_dump(self.config.dump)
                log.warning("live dump written to %s (guest paused %.2f s)",
                            self.config.dump, seconds)
            except PyvmmError as exc:
                log.error("live dump failed: %s", exc)

    def _finish(self) -> None:
        """Whatever stopped us: vCPUs out, output and disks flushed, the dump, the console."""
        self.request_stop(StopReason.vmm_error("stopped without a reason"))  # no-op if set
        self.runners.join()
        if self.gdb is not None:
            reason = self.exit_event.reason
            self.gdb.close(reason.status if reason is not None else None)
        self._flush_console()
        self._note_where_vcpus_were()
        self._note_assists()
        self._dump_at_exit()
        if self._control is not None:
            self._control.close()
        self._shut_down_devices()
        self.console.restore()

    def _flush_console(self) -> None:
        """Every byte the guest sent reaches the console before pyvmm goes on."""
        try:
            fast = self.uart_fast
            if fast is not None:
                acks = fast.acks_absorbed()
                fast.close()
                if self.stats is not None:
                    counter = self.stats.counter()
                    counter.add_uncounted(("pio-out-coalesced", fast.thr_port),
                                          fast.coalesced_writes)
                    for key, count in acks.items():
                        counter.add_uncounted(key, count)
            self.pump.flush()
        except Exception as exc:  # noqa: BLE001 - the stop reason still counts
            log.error("could not write the guest's last console output: %s", exc)

    def _dump_at_exit(self) -> None:
        reason = self.exit_event.reason
        if not self.config.dump or reason is None:
            return
        from pyvmm.dump.capture import dump_machine, wanted

        if not wanted(self.config.dump_on, reason):
            return
        try:
            seconds = dump_machine(self.config.dump, self.memory, self.vcpus, reason)
            log.warning("guest dump written to %s in %.1f s", self.config.dump, seconds)
        except Exception as exc:  # noqa: BLE001 - the exit status still tells what happened
            log.error("could not write the guest dump: %s", exc)

    def _shut_down_devices(self) -> None:
        """Finish device work and make disk writes durable, whatever stopped us (once)."""
        if self._devices_shut_down:
            return
        self._devices_shut_down = True
        for transport in self.virtio:
            try:
                transport.shutdown()
            except Exception as exc:  # noqa: BLE001 - the others still get flushed
                log.error("shutting down virtio device %d: %s", transport.device.device_id, exc)
                reason = self.exit_event.reason
                if reason is not None and reason.status == 0:
                    self.exit_event.amend(StopReason.vmm_error(
                        f"could not flush a disk at exit: {exc}"))

    def _add_to_stop_message(self, text: str) -> None:
        reason = self.exit_event.reason
        if reason is not None:
            self.exit_event.amend(dataclasses.replace(reason, message=f"{reason.message} {text}"))

    def _note_assists(self) -> None:
        if self.assists:
            done = ", ".join(f"{count} {name}" for name, count in sorted(self.assists.items()))
            self._add_to_stop_message(f"[emulation assists: {done}]")

    def _note_where_vcpus_were(self) -> None:
        """For a timeout, signal or triple fault, say where each vCPU was: evidence."""
        reason = self.exit_event.reason
        if reason is None or reason.kind not in ("timeout", "signal", "triple-fault"):
            return
        places = []
        for vcpu, runner in zip(self.vcpus, self.runners):
            if runner.state is not VcpuPhase.EXITED:
                continue
            try:
                places.append(f"vCPU {vcpu.id} at RIP {vcpu.get_regs()['rip']:#x}")
            except Exception:  # noqa: BLE001 - only a report
                pass
        if places:
            self._add_to_stop_message(f"({', '.join(places)})")

    # -- releasing ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the VM: vCPU and VM fds, guest RAM, the event loop (once)."""
        if self._closed:
            return
        self._closed = True
        if self.gdb is not None:
            self.gdb.close(None)
        # A machine never run (a clone restored ahead, stopped unused) closes its disks here:
        # ``run`` shuts the devices down when it ends, and only then.
        self._shut_down_devices()
        for transport in self.virtio:
            transport.device.reset()  # drops its views of guest RAM
        for vcpu in self.vcpus:
            vcpu.close()
        if self._on_closing is not None:
            try:
                self._on_closing(self.memory)
            except Exception as exc:  # noqa: BLE001 - a hint lost, the release goes on
                log.error("closing the machine: %s", exc)
        for fd in self._owned_fds:
            os.close(fd)
        self._run_closers()
        self.vm.close()
        self.loop.close()
        os.close(self.kvm.fd)
        try:
            self.memory.close()
        except BufferError:
            log.debug("guest RAM still has views; left to the garbage collector")
        if self._on_closed is not None:
            self._on_closed()

    def carry_disks(self) -> Disks | None:
        """The disks, kept for the machine built after a guest reboot (``--on-reboot
        restart``): this machine's close drops only its connections to them, and
        the next machine owns them (``build_machine(..., disks=)``)."""
        disks = self.disks
        if disks is not None and disks.close in self._closers:
            self._closers[self._closers.index(disks.close)] = disks.disconnect
        return disks

    def _run_closers(self) -> None:
        """Release what the machine started beside the VM (once; one failing stops none)."""
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - the others still run
                log.error("releasing %s: %s", getattr(closer, "__qualname__", closer), exc)

    def close_at_exit(self) -> None:
        """Before the process exits: leave the VM's teardown to a short-lived child.

        Destroying a VM (in-kernel irqchip and PIT, SRCU grace periods) takes
        15 - 350 ms on a busy host, and the process whose exit drops the last
        reference to the VM fd waits for it.  A forked child that keeps only
        the VM fd takes that wait, after pyvmm has exited with its status.
        Guest RAM is MADV_DONTFORK, so the fork copies no guest page tables.
        What must not outlive pyvmm (the ``closers``: virtiofsd and its
        ``/tmp/pyvmm-fs-*`` directory) is released here first, on every exit.
        """
        self._run_closers()
        try:
            pid = os.fork()
        except OSError:
            return  # the exit then waits for the teardown; nothing else changes
        if pid == 0:  # the child: no Python clean-up, no other fd (disk locks, pipes)
            try:
                parent = os.getppid()
                os.closerange(0, self.vm.fd)
                os.closerange(self.vm.fd + 1, 1 << 20)
                deadline = time.monotonic() + VM_TEARDOWN_WAIT_SECONDS
                while os.getppid() == parent and time.monotonic() < deadline:
                    time.sleep(0.002)  # until pyvmm has exited: then the VM fd is ours alone
            finally:
                os._exit(0)


@contextlib.contextmanager
def _device_threads_paused(transports: Sequence) -> Iterator[None]:
    """Devices that serve their queues on a thread of their own (a raw disk's or a passt
    NIC's C loop) stop between two passes inside the block, so a snapshot sees their
    rings at rest."""
    devices = [t.device for t in transports if hasattr(t.device, "pause_serving")]
    for device in devices:
        device.pause_serving()
    try:
        yield
    finally:
        for device in devices:
            device.resume_serving()
