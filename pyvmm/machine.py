"""A built machine and its run loop.

``pyvmm.builder.build_machine`` assembles one; ``Machine.run`` runs one
thread per vCPU (KVM_RUN releases the GIL) while the main thread runs the
epoll loop over stdin, signals and device events, and stops everything on the
first ``StopReason``: poweroff, reset, triple fault, timeout, a signal, or an
exception in any device or vCPU code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Protocol, Callable

from pyvmm.arch.x86_64.boot import BootState
from pyvmm.config import MachineConfig
from pyvmm.console import FATAL_SIGNALS, HostConsole
from pyvmm.devices.bus import Bus
from pyvmm.devices.serial import Serial
from pyvmm.dispatch import UnknownAccessLog, dispatch_exit
from pyvmm.errors import DeviceError, PyvmmError
from pyvmm.eventloop import EventLoop
from pyvmm.exitstatus import StopReason
from pyvmm.emulation_assist import plan_assist
from pyvmm.kvm.exits import InternalError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.uart_fastpath import RING_POLL_SECONDS, UartFastPath

if TYPE_CHECKING:
    from pyvmm.control import ControlServer
    from pyvmm.stats import RunStats

log = logging.getLogger(__name__)


#: Signal used to kick a vCPU thread out of KVM_RUN (its handler does nothing).
KICK_SIGNAL = signal.SIGRTMIN
#: How long stopping waits for vCPU threads before giving up on them.
VCPU_JOIN_SECONDS = 5.0
#: How long the VM teardown child waits for pyvmm to exit before it lets go anyway.
VM_TEARDOWN_WAIT_SECONDS = 10.0


class ConsoleInput(Protocol):
    """A device that takes host keyboard input (the UART, virtio-console)."""

    def input_room(self) -> int: ...

    def enqueue_input(self, data: bytes) -> object: ...


@dataclass
class Machine:
    """A built VM, ready to run once."""

    config: MachineConfig
    kvm: Kvm
    vm: Vm
    memory: GuestMemory
    vcpus: list[Vcpu]
    boot: BootState
    console: HostConsole
    loop: EventLoop
    pio_bus: Bus = field(default_factory=Bus)
    mmio_bus: Bus = field(default_factory=Bus)
    serial: Serial | None = None
    #: Where host stdin goes: the UART, or hvc0 when the guest's console is there.
    console_input: ConsoleInput | None = None
    virtio: list = field(default_factory=list)
    #: eventfds made for ioeventfd/irqfd wiring, closed with the machine.
    owned_fds: list[int] = field(default_factory=list)
    #: Called by ``close`` after the devices: helper processes (virtiofsd) and the like.
    closers: list[Callable[[], None]] = field(default_factory=list)
    pvm_host: bool = False
    #: Finish int3/fwait after an emulation failure (see pyvmm.emulation_assist).
    emulation_assist: bool = False
    #: How many instructions were finished that way, by name.
    assists: dict[str, int] = field(default_factory=dict)
    #: Exit counts and start-up milestones for --stats (None: not counted).
    stats: RunStats | None = None
    #: COM1's THR writes coalesced and LSR reads served in C (None: all through Serial).
    uart_fast: UartFastPath | None = None
    #: perf_counter() when the first stop reason came (for --stats).
    stop_requested_at: float | None = None
    _stop_reason: StopReason | None = None
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    _threads: list[threading.Thread] = field(default_factory=list)
    _unknown: UnknownAccessLog = field(default_factory=UnknownAccessLog)
    _stdin_paused: bool = False
    _pausing: bool = False
    _parked: int = 0
    _pause_cond: threading.Condition = field(default_factory=threading.Condition)
    _usr1_pending: bool = False
    _control: ControlServer | None = None
    _stdin_is_file: bool = False

    # -- stopping ------------------------------------------------------------

    def request_stop(self, reason: StopReason) -> None:
        """Record the first reason to stop and wake the main loop (any thread)."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
                self.stop_requested_at = time.perf_counter()
            self._stopping = True
        self.loop.stop()

    def _kick_vcpus(self) -> None:
        for vcpu, thread in zip(self.vcpus, self._threads):
            vcpu.request_exit()
            if thread.is_alive() and thread.ident is not None:
                try:
                    signal.pthread_kill(thread.ident, KICK_SIGNAL)
                except ProcessLookupError:
                    pass

    def _join_vcpus(self) -> None:
        deadline = time.monotonic() + VCPU_JOIN_SECONDS
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                self._kick_vcpus()
                thread.join(0.05)
            if thread.is_alive():
                log.warning("vCPU thread %s did not stop", thread.name)

    # -- vCPU threads ---------------------------------------------------------

    def _vcpu_main(self, vcpu: Vcpu) -> None:
        try:
            reason = self._vcpu_loop(vcpu)
            if reason is not None and reason.kind == "triple-fault":
                reason = dataclasses.replace(reason, message=f"{reason.message} on vCPU {vcpu.id}")
            if reason is not None:
                self.request_stop(reason)
        except Exception as exc:  # noqa: BLE001 - reported, then the VM stops
            log.debug("vCPU %d failed:\n%s", vcpu.id, traceback.format_exc())
            self.request_stop(StopReason.vmm_error(f"vCPU {vcpu.id}: {exc}"))

    def _vcpu_loop(self, vcpu: Vcpu) -> StopReason | None:
        """KVM_RUN and serve exits until one stops the machine (or we are stopping)."""
        pio, mmio, unknown, fast = self.pio_bus, self.mmio_bus, self._unknown, self.uart_fast
        counter = None if self.stats is None else self.stats.counter()
        clock = time.perf_counter_ns
        if counter is not None:
            from pyvmm.stats import exit_key

        def read_rip() -> int:
            return vcpu.get_regs()["rip"]

        if self.stats is not None:
            self.stats.note_first_run()
        while not self._stopping:
            if self._pausing:
                self._park()
                continue
            if counter is None:
                exit = vcpu.run() if fast is None else fast.run(vcpu)
            else:
                entered = clock()
                exit = vcpu.run() if fast is None else fast.run(vcpu)
                returned = clock()
                counter.in_kvm_ns += returned - entered
            if fast is not None:
                fast.drain_pending()  # writes the guest made before this exit come first
            if isinstance(exit, InternalError) and self.emulation_assist \
                    and self._assist(vcpu, exit):
                reason = None
            else:
                reason = dispatch_exit(exit, pio, mmio, unknown, read_rip, self.pvm_host)
            if counter is not None:
                counter.add(exit_key(exit), clock() - returned)
            if reason is not None:
                break
        else:
            reason = None
        if counter is not None and fast is not None:
            for key, count in fast.served_in_c(vcpu).items():
                counter.add_uncounted(key, count)
        return reason

    def _assist(self, vcpu: Vcpu, exit: InternalError) -> bool:
        """Carry out an instruction KVM's emulator failed on, if we soundly can."""
        assist = plan_assist(exit)
        if assist is None:
            return False
        regs = vcpu.get_regs()
        regs["rip"] += assist.length
        vcpu.set_regs(regs)
        if assist.vector is not None:
            vcpu.inject_exception(assist.vector)
        self.assists[assist.name] = self.assists.get(assist.name, 0) + 1
        log.debug("vCPU %d: finished %s for the emulator at RIP %#x", vcpu.id, assist.name,
                  regs["rip"] - assist.length)
        return True

    # -- pausing for live dumps -----------------------------------------------------

    def _park(self) -> None:
        """Called by a vCPU thread: wait here until the pause is over."""
        with self._pause_cond:
            self._parked += 1
            self._pause_cond.notify_all()
            while self._pausing and not self._stopping:
                self._pause_cond.wait(0.5)
            self._parked -= 1

    def live_dump(self, path: str) -> float:
        """Pause every vCPU, dump the guest to ``path``, resume; return the seconds taken."""
        from pyvmm.dump.capture import dump_machine

        start = time.monotonic()
        with self._pause_cond:
            self._pausing = True
        try:
            deadline = time.monotonic() + VCPU_JOIN_SECONDS
            all_parked = lambda: self._parked >= len(self._threads)  # noqa: E731
            while time.monotonic() < deadline:
                self._kick_vcpus()  # out of KVM_RUN, into _park
                with self._pause_cond:
                    if self._pause_cond.wait_for(all_parked, 0.02):
                        break
            else:
                raise DeviceError("could not pause the vCPUs for a live dump")
            dump_machine(path, self.memory, self.vcpus, None)
        finally:
            with self._pause_cond:
                self._pausing = False
                self._pause_cond.notify_all()
        return time.monotonic() - start

    def _on_sigusr1(self) -> None:
        """SIGUSR1 with --dump-on signal: a live dump to --dump."""
        if self.config.dump and "signal" in self.config.dump_on:
            try:
                seconds = self.live_dump(self.config.dump)
                log.warning("live dump written to %s (guest paused %.2f s)",
                            self.config.dump, seconds)
            except PyvmmError as exc:
                log.error("live dump failed: %s", exc)

    # -- the console ------------------------------------------------------------

    def _feed_stdin(self, _events: int = 0) -> None:
        """Move what stdin has into the UART, pausing while its buffer is full."""
        target = self.console_input
        assert target is not None
        room = target.input_room()
        if room <= 0:
            if not self._stdin_is_file and not self._stdin_paused:
                self.loop.remove(self.console.stdin_fd)
                self._stdin_paused = True
            return
        data = self.console.read_input(min(room, 4096))
        if data:
            target.enqueue_input(data)
        elif self.console.at_eof and not self._stdin_is_file:
            self.loop.remove(self.console.stdin_fd)

    def _tick(self) -> float | None:
        """Serve a SIGUSR1, flush the UART's waiting output, feed stdin; the next wait bound."""
        if self._usr1_pending:
            self._usr1_pending = False
            self._on_sigusr1()
        if self.uart_fast is not None and self.uart_fast.coalescing:
            self.uart_fast.drain()
        output = self.serial.flush_due() if self.serial is not None else None
        if self.uart_fast is not None and self.uart_fast.coalescing:
            output = min(output or RING_POLL_SECONDS, RING_POLL_SECONDS)
        stdin = self._tick_stdin()
        return stdin if output is None else output if stdin is None else min(output, stdin)

    def _tick_stdin(self) -> float | None:
        """Resume a paused stdin, or poll a stdin epoll can't watch."""
        if self.console.at_eof or self.console_input is None:
            return None
        if self._stdin_paused and self.console_input.input_room() > 0:
            self._stdin_paused = False
            self.loop.add(self.console.stdin_fd, self._feed_stdin)
        elif self._stdin_is_file:
            self._feed_stdin()
        return 0.05 if (self._stdin_paused or self._stdin_is_file) else None

    def _watch_stdin(self) -> None:
        try:  # stdin stays blocking: the console reads it only when poll says so
            self.loop.add(self.console.stdin_fd, self._feed_stdin)
        except PermissionError:
            self._stdin_is_file = True  # a regular file or /dev/null: never blocks
        except OSError:
            self.console.at_eof = True  # no usable stdin

    # -- running ---------------------------------------------------------------

    def run(self) -> StopReason:
        """Run the guest until it stops; return why.  Call once."""
        previous = self._install_signal_handlers()
        self.console.start()
        try:
            self._watch_stdin()
            if self.config.control:
                from pyvmm.control import ControlServer

                self._control = ControlServer(self.config.control, self.live_dump)
                self.loop.add(self._control.fd, self._control.on_ready)
            for vcpu in self.vcpus:
                thread = threading.Thread(target=self._vcpu_main, args=(vcpu,),
                                          name=f"vcpu{vcpu.id}", daemon=True)
                self._threads.append(thread)
                thread.start()
            deadline = None
            if self.config.timeout is not None:
                deadline = time.monotonic() + self.config.timeout
            if not self.loop.run(deadline, self._tick):
                self.request_stop(StopReason.timeout(self.config.timeout or 0))
        except Exception as exc:  # noqa: BLE001 - reported, then the VM stops
            log.debug("event loop failed:\n%s", traceback.format_exc())
            self.request_stop(StopReason.vmm_error(f"event loop: {exc}"))
        finally:
            self._stopping = True
            self._join_vcpus()
            self._flush_console()
            self._note_where_vcpus_were()
            self._note_assists()
            self._dump_at_exit()
            if self._control is not None:
                self._control.close()
            self._shut_down_devices()
            self.console.restore()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        assert self._stop_reason is not None
        return self._stop_reason

    def _flush_console(self) -> None:
        """Every byte the guest sent reaches the console before pyvmm goes on."""
        if self.serial is not None:
            try:
                if self.uart_fast is not None:
                    self.uart_fast.close()
                    if self.stats is not None:
                        self.stats.counter().add_uncounted(
                            ("pio-out-coalesced", self.uart_fast.thr_port),
                            self.uart_fast.coalesced_writes)
                self.serial.flush()
            except Exception as exc:  # noqa: BLE001 - the stop reason still counts
                log.error("could not write the guest's last console output: %s", exc)

    def _dump_at_exit(self) -> None:
        reason = self._stop_reason
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

    def close(self) -> None:
        """Release the VM: vCPU and VM fds, guest RAM, the event loop."""
        for transport in self.virtio:
            transport.device.reset()  # drops its views of guest RAM
        for vcpu in self.vcpus:
            vcpu.close()
        for fd in self.owned_fds:
            os.close(fd)
        for closer in self.closers:
            closer()
        self.vm.close()
        self.loop.close()
        os.close(self.kvm.fd)
        try:
            self.memory.close()
        except BufferError:
            log.debug("guest RAM still has views; left to the garbage collector")

    def close_at_exit(self) -> None:
        """Before the process exits: leave the VM's teardown to a short-lived child.

        Destroying a VM (in-kernel irqchip and PIT, SRCU grace periods) takes
        15 - 350 ms on a busy host, and the process whose exit drops the last
        reference to the VM fd waits for it.  A forked child that keeps only
        the VM fd takes that wait, after pyvmm has exited with its status.
        Guest RAM is MADV_DONTFORK, so the fork copies no guest page tables.
        """
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

    def _shut_down_devices(self) -> None:
        """Finish device work and make disk writes durable, whatever stopped us."""
        for transport in self.virtio:
            try:
                transport.shutdown()
            except Exception as exc:  # noqa: BLE001 - the others still get flushed
                log.error("shutting down virtio device %d: %s", transport.device.device_id, exc)
                if self._stop_reason is not None and self._stop_reason.status == 0:
                    self._stop_reason = StopReason.vmm_error(
                        f"could not flush a disk at exit: {exc}")

    def _add_to_stop_message(self, text: str) -> None:
        if self._stop_reason is not None:
            self._stop_reason = dataclasses.replace(
                self._stop_reason, message=f"{self._stop_reason.message} {text}")

    def _note_assists(self) -> None:
        if self.assists:
            done = ", ".join(f"{count} {name}" for name, count in sorted(self.assists.items()))
            self._add_to_stop_message(f"[emulation assists: {done}]")

    def _note_where_vcpus_were(self) -> None:
        """For a timeout, signal or triple fault, say where each vCPU was: evidence."""
        reason = self._stop_reason
        if reason is None or reason.kind not in ("timeout", "signal", "triple-fault"):
            return
        places = []
        for vcpu, thread in zip(self.vcpus, self._threads):
            if thread.is_alive():
                continue
            try:
                places.append(f"vCPU {vcpu.id} at RIP {vcpu.get_regs()['rip']:#x}")
            except Exception:  # noqa: BLE001 - only a report
                pass
        if places:
            self._add_to_stop_message(f"({', '.join(places)})")

    def _install_signal_handlers(self) -> dict[int, Callable | int | None]:
        def stop_on_signal(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(StopReason.signal(signum, signal.Signals(signum).name))

        def usr1(_signum: int, _frame: FrameType | None) -> None:
            self._usr1_pending = True
            self.loop.wake()

        previous: dict[int, Callable | int | None] = {}
        handlers: list[tuple[int, Callable]] = [(signum, stop_on_signal)
                                                for signum in FATAL_SIGNALS]
        handlers += [(signal.SIGUSR1, usr1), (KICK_SIGNAL, lambda *_: None)]
        for signum, handler in handlers:
            previous[signum] = signal.signal(signum, handler)
        return previous
