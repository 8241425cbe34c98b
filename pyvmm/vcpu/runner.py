"""One thread per vCPU with explicit states: created -> running <-> paused -> exited.

A ``VcpuRunner`` knows nothing of devices: it calls ``vcpu.run()`` (KVM_RUN,
which releases the GIL) and hands each exit, as data, to ``serve``, which
returns ``None`` to run on or a ``StopReason``.  Everything that changes its
state is an event: ``pause()``, ``resume()`` and ``stop()`` set what the
thread should do next and *kick* it (``request_exit`` makes the next KVM_RUN
return at once; a signal interrupts the current one).  A reason to stop, and
any exception in ``serve`` or in KVM_RUN, goes to the machine's exit event:
nothing a vCPU does vanishes.  ``VcpuRunners`` drives them together: a live
dump or a register read happens inside ``with runners.paused():``.

Tested with a scripted fake vCPU (tests/unit/test_vcpu_runner.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import signal
import threading
import time
import traceback
from typing import Callable, Iterator, Protocol, Sequence

from pyvmm.errors import DeviceError, HostError
from pyvmm.vcpu.exit_event import ExitEvent
from pyvmm.exitstatus import StopReason
from pyvmm.kvm.exits import VmExit

log = logging.getLogger(__name__)

#: Signal used to kick a vCPU thread out of KVM_RUN (its handler does nothing).
KICK_SIGNAL = signal.SIGRTMIN
#: How long stopping or pausing waits for vCPU threads before giving up on them.
VCPU_JOIN_SECONDS = 5.0
#: How often a pause or stop kicks again while it waits (a kick may land just
#: before KVM_RUN is entered, where only ``request_exit`` catches it).
KICK_INTERVAL_SECONDS = 0.02


class RunnableVcpu(Protocol):
    """What the runner needs of a vCPU: pyvmm.kvm.vcpu.Vcpu, or a test's script."""

    id: int

    def run(self) -> VmExit: ...

    def request_exit(self) -> None: ...


class VcpuPhase(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"


def ensure_kick_handler() -> None:
    """Give KICK_SIGNAL a do-nothing handler, so a kick interrupts KVM_RUN, not the process.

    Python sets signal handlers only from the main thread; the first machine
    started there (or ``import pyvmm.api``) installs it, and machines started
    from other threads afterwards find it in place.
    """
    if signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, None):
        return
    if threading.current_thread() is not threading.main_thread():
        raise HostError("the first pyvmm machine must be started (or pyvmm.api imported) "
                        "from the main thread: Python installs signal handlers only there")
    signal.signal(KICK_SIGNAL, _ignore_kick)


def _ignore_kick(_signum: int, _frame: object) -> None:
    """The kick's only job is to make KVM_RUN return EINTR."""


class VcpuRunner:
    """Runs one vCPU on its own thread; its state changes only through events."""

    def __init__(self, vcpu: RunnableVcpu, serve: Callable[[VmExit], StopReason | None],
                 exit_event: ExitEvent, on_exit: Callable[[], None] = lambda: None) -> None:
        self.vcpu = vcpu
        self._serve = serve
        self._exit_event = exit_event
        self._on_exit = on_exit
        self._cond = threading.Condition()
        self._state = VcpuPhase.CREATED
        self._want_pause = False
        #: Held for a debugger (pyvmm.gdb), apart from pauses (a live dump's resume
        #: must not let a vCPU gdb holds run).
        self._held = False
        self._want_stop = False
        self._thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.id}", daemon=True)

    @property
    def state(self) -> VcpuPhase:
        return self._state

    # -- events (any thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        """Ask the thread to park before its next KVM_RUN; ``wait_for`` PAUSED to know."""
        with self._cond:
            self._want_pause = True
        self.kick()

    def resume(self) -> None:
        with self._cond:
            self._want_pause = False
            self._cond.notify_all()

    def hold(self) -> None:
        """Like ``pause``, for a debugger: parked until ``release``, whatever pauses end."""
        with self._cond:
            self._held = True
        self.kick()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def held(self) -> bool:
        return self._held

    def stop(self) -> None:
        """Ask the thread to end (at once if paused, after the current exit if serving)."""
        with self._cond:
            self._want_stop = True
            self._cond.notify_all()
        self.kick()

    def kick(self) -> None:
        """Out of KVM_RUN now (signal), or at the next entry (``request_exit``)."""
        self.vcpu.request_exit()
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def wait_for(self, states: tuple[VcpuPhase, ...], timeout: float) -> bool:
        """Whether the thread reached one of ``states`` within ``timeout`` (kicking it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._state in states,
                                       min(KICK_INTERVAL_SECONDS,
                                           max(deadline - time.monotonic(), 0))):
                    return True
            if time.monotonic() >= deadline:
                return False
            self.kick()

    def join(self, timeout: float) -> bool:
        """Stop and wait for the thread; False if it would not end within ``timeout``."""
        if self._state is VcpuPhase.CREATED and not self._thread.is_alive():
            self._set_state(VcpuPhase.EXITED)
            return True
        self.stop()
        return self.wait_for((VcpuPhase.EXITED,), timeout)

    # -- the thread -------------------------------------------------------------------

    def _set_state(self, state: VcpuPhase) -> None:
        with self._cond:
            self._state = state
            self._cond.notify_all()

    def _main(self) -> None:
        self._set_state(VcpuPhase.RUNNING)
        try:
            reason = self._loop()
            if reason is not None and reason.kind == "triple-fault":
                reason = dataclasses.replace(
                    reason, message=f"{reason.message} on vCPU {self.vcpu.id}")
            if reason is not None:
                self._exit_event.set(reason)
        except Exception as exc:  # noqa: BLE001 - reported, then the VM stops
            log.debug("vCPU %d failed:\n%s", self.vcpu.id, traceback.format_exc())
            self._exit_event.set(StopReason.vmm_error(f"vCPU {self.vcpu.id}: {exc}"))
        finally:
            try:
                self._on_exit()
            finally:
                self._set_state(VcpuPhase.EXITED)

    def _loop(self) -> StopReason | None:
        """KVM_RUN and serve exits until one stops the machine or we are told to stop.

        A device that fires the exit event while an exit is served (debug-exit,
        ACPI poweroff) stops this vCPU before it enters the guest again, and
        every other vCPU at its next exit: the guest runs no further than that.
        """
        vcpu, serve, stopping = self.vcpu, self._serve, self._exit_event.is_set
        while not self._want_stop and not stopping():
            if self._want_pause or self._held:
                self._park()
                continue
            reason = serve(vcpu.run())
            if reason is not None:
                return reason
        return None

    def _park(self) -> None:
        with self._cond:
            self._state = VcpuPhase.PAUSED
            self._cond.notify_all()
            while (self._want_pause or self._held) and not self._want_stop:
                self._cond.wait()
            self._state = VcpuPhase.RUNNING
            self._cond.notify_all()


class VcpuRunners:
    """All of a machine's runners, started, paused and stopped together."""

    def __init__(self, runners: Sequence[VcpuRunner]) -> None:
        self.runners = list(runners)

    def __iter__(self) -> Iterator[VcpuRunner]:
        return iter(self.runners)

    def start(self) -> None:
        ensure_kick_handler()
        for runner in self.runners:
            runner.start()

    @property
    def running(self) -> bool:
        """Whether any vCPU thread is started and not yet exited."""
        return any(r.state in (VcpuPhase.RUNNING, VcpuPhase.PAUSED) for r in self.runners)

    @contextlib.contextmanager
    def paused(self, timeout: float = VCPU_JOIN_SECONDS) -> Iterator[None]:
        """Every vCPU out of KVM_RUN (parked or exited) inside the block; resumed after."""
        for runner in self.runners:
            runner.pause()
        try:
            deadline = time.monotonic() + timeout
            for runner in self.runners:
                if not runner.wait_for((VcpuPhase.PAUSED, VcpuPhase.EXITED, VcpuPhase.CREATED),
                                       max(deadline - time.monotonic(), 0)):
                    raise DeviceError(f"could not pause vCPU {runner.vcpu.id}")
            yield
        finally:
            for runner in self.runners:
                runner.resume()

    def join(self, timeout: float = VCPU_JOIN_SECONDS) -> list[VcpuRunner]:
        """Stop every thread; return the runners whose thread would not end."""
        for runner in self.runners:
            runner.stop()
        deadline = time.monotonic() + timeout
        stuck = [r for r in self.runners
                 if not r.join(max(deadline - time.monotonic(), 0))]
        for runner in stuck:
            log.warning("vCPU thread %d did not stop", runner.vcpu.id)
        return stuck
