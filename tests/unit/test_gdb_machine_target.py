"""The machine as gdb's target, without /dev/kvm: trap decisions, holds, --gdb options."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from pyvmm.config.machine import config_from_options
from pyvmm.errors import ConfigError
from pyvmm.eventloop import EventLoop
from pyvmm.config.values import GdbAddress, parse_gdb_address
from pyvmm.gdb.debugregs import DR6_SINGLE_STEP
from pyvmm.gdb.target import SIGTRAP, Debugging, Stop
from pyvmm.kvm.exits import Debug, InternalError
from pyvmm.kvm.exits import INTERNAL_ERROR_EMULATION
from pyvmm.memory import GuestMemory
from pyvmm.vcpu.exit_event import ExitEvent
from pyvmm.vcpu.runner import VcpuRunner, VcpuRunners, VcpuPhase, ensure_kick_handler
from pyvmm.vmm.gdb_target import MachineTarget

from tests.unit.test_vcpu_runner import ScriptedVcpu

WAIT = 5.0


class FakeVcpu:
    """Registers and the debug calls a MachineTarget makes."""

    def __init__(self, vcpu_id: int) -> None:
        self.id = vcpu_id
        self.regs = {"rip": 0x1000}
        self.injected: list[int] = []
        self.debug: list[tuple[int, tuple[int, ...]]] = []

    def get_regs(self) -> dict[str, int]:
        return dict(self.regs)

    def inject_exception(self, vector: int) -> None:
        self.injected.append(vector)

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        self.debug.append((control, tuple(debugreg)))


class FakeRunner:
    def __init__(self) -> None:
        self.held = False
        self.state = VcpuPhase.PAUSED

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    def wait_for(self, states: tuple[VcpuPhase, ...], timeout: float) -> bool:
        return True


def make_target(cpus: int = 2) -> tuple[MachineTarget, list[FakeVcpu], list[FakeRunner]]:
    vcpus = [FakeVcpu(i) for i in range(cpus)]
    runners = [FakeRunner() for _ in range(cpus)]
    fake_runners = cast(Any, type("Runners", (), {"runners": runners,
                                                  "__iter__": lambda self: iter(runners)})())
    target = MachineTarget(cast(Any, vcpus), fake_runners, GuestMemory.from_bytes(1 << 20),
                           lambda: None)
    return target, vcpus, runners


DEBUGGING = Debugging(frozenset({0x1000}), (0x2000, 0x3000, 0, 0, 0, 0, 0, 0x1D0303), (1, 2))


def test_our_int3_stops_every_vcpu_and_wakes_the_server() -> None:
    target, vcpus, runners = make_target()
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    assert not any(r.held for r in runners)
    assert target.on_exit(1, Debug(3, 0x1000, 0, 0))
    assert all(r.held for r in runners)
    assert target.take_stop() == Stop(1, SIGTRAP, "swbreak")
    assert target.take_stop() is None
    target.close()


def test_the_guests_own_int3_goes_back_to_the_guest() -> None:
    target, vcpus, runners = make_target()
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    assert target.on_exit(0, Debug(3, 0x1234, 0, 0))
    assert vcpus[0].injected == [3]
    assert not any(r.held for r in runners) and target.take_stop() is None
    target.close()


def test_debug_register_hits_name_the_point() -> None:
    target, vcpus, runners = make_target()
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    target.on_exit(0, Debug(1, 0x2000, 0xFFFF0FF1, 0))
    assert target.take_stop() == Stop(0, SIGTRAP, "hwbreak", 0x2000)
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    target.on_exit(1, Debug(1, 0x1010, 0xFFFF0FF2, 0))
    assert target.take_stop() == Stop(1, SIGTRAP, "watch", 0x3000)
    target.resume({0: "s"}, DEBUGGING)
    target.on_exit(0, Debug(1, 0x1001, 0xFFFF0FF0 | DR6_SINGLE_STEP, 0))
    assert target.take_stop() == Stop(0, SIGTRAP, "")
    target.close()


def test_the_first_stop_wins() -> None:
    target, _, _ = make_target()
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    target.on_exit(1, Debug(3, 0x1000, 0, 0))
    target.on_exit(0, Debug(3, 0x1000, 0, 0))
    assert target.take_stop() == Stop(1, SIGTRAP, "swbreak")
    target.close()


def test_kvm_pvm_int3_at_our_breakpoint_is_a_hit_elsewhere_not_ours() -> None:
    target, vcpus, _ = make_target()
    failed_int3 = InternalError(INTERNAL_ERROR_EMULATION, (1,), b"\xcc\x90")
    assert not target.on_exit(0, failed_int3)  # no gdb attached: the emulation assist's
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    assert target.on_exit(0, failed_int3)
    assert target.take_stop() == Stop(0, SIGTRAP, "swbreak")
    vcpus[1].regs["rip"] = 0x5000
    target.resume({0: "c", 1: "c"}, DEBUGGING)
    assert not target.on_exit(1, failed_int3)
    assert not target.on_exit(0, InternalError(INTERNAL_ERROR_EMULATION, (1,), b"\x0f\x0b"))
    target.close()


def test_resume_arms_kvm_guest_debug_per_vcpu() -> None:
    from pyvmm.kvm._ffi import lib

    target, vcpus, runners = make_target()
    target.stop_all()
    target.resume({1: "s"}, DEBUGGING)
    base = lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_SW_BP | lib.KVM_GUESTDBG_USE_HW_BP
    assert vcpus[0].debug[-1] == (base, DEBUGGING.debugreg)
    assert vcpus[1].debug[-1] == (base | lib.KVM_GUESTDBG_SINGLESTEP
                                  | lib.KVM_GUESTDBG_BLOCKIRQ, DEBUGGING.debugreg)
    assert runners[0].held and not runners[1].held  # the others wait while one steps
    target.resume({0: "c", 1: "c"}, None)  # detached: no traps at all
    assert [v.debug[-1] for v in vcpus] == [(0, (0,) * 8)] * 2
    target.close()


def test_held_time_stops_the_timeout_clock() -> None:
    target, _, _ = make_target()
    assert not target.holding and target.held_seconds() == 0
    target.stop_all()
    assert target.holding
    time.sleep(0.05)
    target.resume({0: "c", 1: "c"}, None)
    held = target.held_seconds()
    assert not target.holding and 0.05 <= held < 1
    time.sleep(0.02)
    assert target.held_seconds() == held
    target.close()


def test_a_held_runner_stays_parked_through_a_pause_and_resume() -> None:
    ensure_kick_handler()
    vcpu = ScriptedVcpu([])
    runner = VcpuRunner(vcpu, lambda exit: None, ExitEvent())
    runner.hold()
    runner.start()
    assert runner.wait_for((VcpuPhase.PAUSED,), WAIT)
    runners = VcpuRunners([runner])
    with runners.paused():  # a live dump meanwhile
        pass
    runs = vcpu.runs
    time.sleep(0.05)
    assert runner.state is VcpuPhase.PAUSED and vcpu.runs == runs
    runner.release()
    assert runner.wait_for((VcpuPhase.RUNNING,), WAIT)
    assert runner.join(WAIT)


def test_a_moving_deadline() -> None:
    loop = EventLoop()
    due = [time.monotonic() + 0.05]
    start = time.monotonic()
    assert not loop.run(lambda: due[0])
    assert time.monotonic() - start >= 0.05
    loop.close()


@pytest.mark.parametrize("text, address", [
    ("1234", GdbAddress(False, host="127.0.0.1", port=1234)),
    ("0.0.0.0:1234", GdbAddress(False, host="0.0.0.0", port=1234)),
    ("[::1]:1234", GdbAddress(False, host="::1", port=1234)),
    ("unix:/tmp/x/gdb.sock", GdbAddress(True, path="/tmp/x/gdb.sock")),
])
def test_gdb_addresses(text: str, address: GdbAddress) -> None:
    assert parse_gdb_address(text) == address


@pytest.mark.parametrize("text, message", [
    ("0", "not a TCP port"), ("70000", "not a TCP port"), ("host:", "not a TCP port"),
    ("unix:", "needs a PATH"), ("unix:/" + "x" * 120, "at most 107 bytes"),
])
def test_bad_gdb_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gdb_address(text)


def test_gdb_options_through_the_python_api(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    config = config_from_options(kernel=kernel, gdb="1234", gdb_wait=True)
    assert (config.gdb, config.gdb_wait) == ("1234", True)
    with pytest.raises(ConfigError, match=r"gdb_wait= needs gdb="):
        config_from_options(kernel=kernel, gdb_wait=True)
    with pytest.raises(ConfigError, match=r"gdb='x:y': 'y' is not a TCP port"):
        config_from_options(kernel=kernel, gdb="x:y")


def test_a_kvm_without_blockirq_still_steps() -> None:
    import errno

    from pyvmm.errors import KvmError
    from pyvmm.kvm._ffi import lib

    target, vcpus, _ = make_target(1)

    def old_kvm(control: int, debugreg: tuple[int, ...] = ()) -> None:
        if control & lib.KVM_GUESTDBG_BLOCKIRQ:
            raise KvmError("KVM_SET_GUEST_DEBUG", errno.EINVAL)
        vcpus[0].debug.append((control, tuple(debugreg)))

    vcpus[0].set_guest_debug = old_kvm  # type: ignore[method-assign]
    target.resume({0: "s"}, DEBUGGING)
    target.resume({0: "s"}, DEBUGGING)
    assert [control & lib.KVM_GUESTDBG_SINGLESTEP for control, _ in vcpus[0].debug] == \
        [lib.KVM_GUESTDBG_SINGLESTEP] * 2
    target.close()
