"""The vCPU runner with a scripted fake vCPU: exits as data, no /dev/kvm."""

from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from pyvmm.vcpu.exit_event import ExitEvent
from pyvmm.exitstatus import StopReason
from pyvmm.kvm.exits import IoOut, VmExit
from pyvmm.vcpu.runner import VcpuRunner, VcpuRunners, VcpuPhase, ensure_kick_handler

from tests.unit.vcpu.conftest import ScriptedVcpu

WAIT = 5.0


def port_write(port: int, value: int = 0) -> IoOut:
    return IoOut(port, 1, memoryview(bytearray([value])))


def runner_for(script: list[VmExit], serve: Callable[[VmExit], StopReason | None],
               event: ExitEvent | None = None) -> tuple[VcpuRunner, ExitEvent]:
    event = event or ExitEvent()
    return VcpuRunner(ScriptedVcpu(script), serve, event), event


@pytest.fixture(autouse=True)
def kick_handler() -> None:
    ensure_kick_handler()


def test_states_from_created_to_exited_on_a_stop_reason() -> None:
    served: list[VmExit] = []

    def serve(exit: VmExit) -> StopReason | None:
        served.append(exit)
        if isinstance(exit, IoOut) and exit.port == 0xF4:
            return StopReason.debug_exit(3)
        return None

    runner, event = runner_for([port_write(0x3F8, 65), port_write(0xF4)], serve)
    assert runner.state is VcpuPhase.CREATED
    runner.start()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert event.reason == StopReason.debug_exit(3)
    assert [e.port for e in served if isinstance(e, IoOut)] == [0x3F8, 0xF4]


def test_pause_parks_the_thread_and_resume_runs_it_on() -> None:
    vcpu, event = ScriptedVcpu([]), ExitEvent()
    runner = VcpuRunner(vcpu, lambda exit: None, event)
    runner.start()
    assert runner.wait_for((VcpuPhase.RUNNING,), WAIT)
    runner.pause()
    assert runner.wait_for((VcpuPhase.PAUSED,), WAIT)
    runs = vcpu.runs
    time.sleep(0.05)
    assert vcpu.runs == runs  # parked: no KVM_RUN
    runner.resume()
    assert runner.wait_for((VcpuPhase.RUNNING,), WAIT)
    deadline = time.monotonic() + WAIT
    while vcpu.runs == runs and time.monotonic() < deadline:
        time.sleep(0.005)
    assert vcpu.runs > runs
    assert runner.join(WAIT)
    assert runner.state is VcpuPhase.EXITED
    assert event.reason is None  # a stop from outside is not the guest's doing


def test_stop_while_paused_ends_the_thread() -> None:
    runner, _ = runner_for([], lambda exit: None)
    runner.start()
    runner.pause()
    assert runner.wait_for((VcpuPhase.PAUSED,), WAIT)
    assert runner.join(WAIT)


def test_stop_during_an_exit_finishes_serving_it_then_ends() -> None:
    """A stop that comes while an exit is being served lets that exit complete."""
    entered, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def serve(exit: VmExit) -> StopReason | None:
        if isinstance(exit, IoOut):
            entered.set()
            release.wait(WAIT)
            finished.append(exit.port)
        return None

    runner, event = runner_for([port_write(0x3F8)], serve)
    runner.start()
    assert entered.wait(WAIT)
    runner.stop()
    assert runner.state is VcpuPhase.RUNNING  # still serving
    release.set()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert finished == [0x3F8]
    assert event.reason is None


def test_an_exception_serving_an_exit_stops_the_machine_with_a_reason() -> None:
    def serve(exit: VmExit) -> StopReason | None:
        if isinstance(exit, IoOut):
            raise ValueError("device exploded")
        return None

    runner, event = runner_for([port_write(0x3F8)], serve)
    runner.start()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert event.reason is not None
    assert event.reason.kind == "vmm-error"
    assert event.reason.status == 6
    assert "vCPU 0: device exploded" in event.reason.message


def test_an_exception_in_kvm_run_stops_the_machine_too() -> None:
    class Broken(ScriptedVcpu):
        def run(self) -> VmExit:
            raise OSError("KVM_RUN failed")

    event = ExitEvent()
    runner = VcpuRunner(Broken([]), lambda exit: None, event)
    runner.start()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert event.reason is not None and "KVM_RUN failed" in event.reason.message


def test_the_first_reason_wins_and_wakes_the_loop() -> None:
    wakes: list[int] = []
    event = ExitEvent(on_set=lambda: wakes.append(1))
    event.set(StopReason.poweroff())
    event.set(StopReason.timeout(1))
    assert event.reason == StopReason.poweroff()
    assert wakes == [1, 1]


def test_runners_pause_together_for_a_consistent_view() -> None:
    event = ExitEvent()
    runners = VcpuRunners([VcpuRunner(ScriptedVcpu([], i), lambda exit: None, event)
                           for i in range(3)])
    runners.start()
    assert runners.running
    with runners.paused(WAIT):
        assert all(r.state is VcpuPhase.PAUSED for r in runners)
    assert all(r.wait_for((VcpuPhase.RUNNING,), WAIT) for r in runners)
    assert runners.join(WAIT) == []
    assert not runners.running


def test_pausing_an_exited_vcpu_does_not_wait_for_it() -> None:
    event = ExitEvent()
    runners = VcpuRunners([VcpuRunner(ScriptedVcpu([port_write(0xF4)]),
                                      lambda exit: StopReason.debug_exit(0), event)])
    runners.start()
    assert runners.runners[0].wait_for((VcpuPhase.EXITED,), WAIT)
    started = time.monotonic()
    with runners.paused(WAIT):
        pass
    assert time.monotonic() - started < 1.0


def test_on_exit_runs_when_the_thread_ends() -> None:
    done: list[str] = []
    runner = VcpuRunner(ScriptedVcpu([port_write(0xF4)]), lambda exit: StopReason.poweroff(),
                        ExitEvent(), on_exit=lambda: done.append("counted"))
    runner.start()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert done == ["counted"]


def test_a_device_firing_the_exit_event_stops_the_vcpu_before_it_runs_again() -> None:
    """The debug-exit port stops the guest at once: no KVM_RUN after the exit that fired it."""
    event = ExitEvent()
    vcpu = ScriptedVcpu([port_write(0xF4, 3), port_write(0x3F8, 65)])
    served: list[int] = []

    def serve(exit: VmExit) -> StopReason | None:
        if isinstance(exit, IoOut):
            served.append(exit.port)
            if exit.port == 0xF4:
                event.set(StopReason.debug_exit(3))  # as DebugExit does: serving returns None
        return None

    runner = VcpuRunner(vcpu, serve, event)
    runner.start()
    assert runner.wait_for((VcpuPhase.EXITED,), WAIT)
    assert served == [0xF4]
    assert vcpu.runs == 1
