#!/usr/bin/env python3
"""What a restored Linux clone does until its first console answer, against its second.

Runs where Linux reaches user space (the rig).  Boots our minimal Linux at
its prompt (as ``snapshot_profile.py``), snapshots it, then restores it
``--runs`` times and, for the interval from ``start()`` to the first answer
and from there to the second, prints:

* KVM's own counters of the vCPU and the VM (``KVM_GET_STATS_FD``, Linux 5.14):
  exits by kind, nested page faults (``pf_taken``, ``pf_fixed``), halts and
  the time halted (``halt_wait_ns``), pages mapped at 4 KiB / 2 MiB, ...;
* every KVM_RUN: how long the vCPU was inside it, and what exit ended it, so
  the time splits into guest (or in-kernel KVM) time and pyvmm's serving;
* when the guest's output came back, relative to the input.

The same counters over the booted guest's own answers come first, for
comparison.  ``--variants`` restores made differently alternate with the plain
ones: ``populate-write`` prefaults the memory file's data writable
(``MADV_POPULATE_WRITE``: the clone's private copy of every page with data);
``anon-copy`` copies the data into anonymous RAM as a boot has it (transparent
huge pages: 2 MiB nested page table entries), no sharing between clones;
``no-advance`` leaves the guest's clocks where the snapshot stopped them (no
jump forward: not what a restore may do, only to see what the jump costs);
``late-input`` types the command 300 ms after ``start()`` (the guest's own
wake-up behind it: the first answer is then timed from the input);
``no-apf`` restores MSR_KVM_ASYNC_PF_EN as 0 (KVM serves the clone's nested page
faults synchronously, never handing the guest a "page not present" to wait on);
``terminal-reply`` is ``late-input`` with a terminal's cursor position report
sent at ``start()``, answering the "ESC [ 6 n" busybox's line editor printed
after its prompt (unanswered, it sleeps 20 ms when Enter comes: the first
answer's halts); compare it with ``late-input``.  ``no-spare`` restores as
an earlier pyvmm did, without the spare VM (``restore_variants.py``).

``--ftrace DIR`` (root, tracefs): KVM's tracepoints (``kvm:*``: every exit with
the guest's RIP, port accesses, interrupts injected, MSR writes, halts and
wake-ups, async page faults) around each restore's two answers and the booted
guest's, one file per machine in DIR, with markers at the input and answers.

Usage: python3 bench/snapshot_trace.py [--runs 3] [--memory 256M] [--timeline 40]
                                       [--ftrace DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyvmm
from restore_variants import variant as restore_variant
from pyvmm.console import guest as console_guest
from pyvmm.host.sparse import data_extents
from pyvmm.vcpu import served
from pyvmm.vcpu.stats import exit_key

REPO = Path(__file__).resolve().parents[1]
KERNEL = REPO / "images" / "out" / "linux" / "bzImage"
INITRD = REPO / "images" / "out" / "initramfs.cpio.gz"
PROMPT = b"/ # "
KVM_GET_STATS_FD = 0xAECE  # _IO(KVMIO, 0xce)

#: (perf_counter_ns entered, returned, exit key) of every KVM_RUN, all vCPUs.
RUNS: list[tuple[int, int, Any]] = []
#: (perf_counter_ns, bytes) of every chunk of guest output.
OUTPUT: list[tuple[int, bytes]] = []
#: ioctl name -> [calls, ns], while ``IOCTLS_ON`` (the build's ioctls, by what they are).
IOCTLS: dict[str, list[int]] = {}
IOCTLS_ON = [False]


def time_ioctls() -> None:
    """Wrap the KVM binding's ioctl helpers where the kvm modules imported them."""
    import importlib

    for name in ("pyvmm.kvm.vm", "pyvmm.kvm.vcpu", "pyvmm.kvm.state", "pyvmm.kvm.system"):
        module = importlib.import_module(name)
        for helper in ("ioctl", "ioctl_value"):
            real = getattr(module, helper, None)
            if real is None:
                continue

            def timed(fd: int, request: int, arg: Any, what: str, real: Any = real) -> int:
                if not IOCTLS_ON[0]:
                    return real(fd, request, arg, what)
                began = time.perf_counter_ns()
                try:
                    return real(fd, request, arg, what)
                finally:
                    entry = IOCTLS.setdefault(what, [0, 0])
                    entry[0] += 1
                    entry[1] += time.perf_counter_ns() - began

            setattr(module, helper, timed)


class Ftrace:
    """The host kernel's ``kvm:*`` tracepoints into tracefs's ring buffer, saved per machine."""

    ROOT = Path("/sys/kernel/tracing")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if not (self.ROOT / "trace").exists():
            os.system(f"mount -t tracefs nodev {self.ROOT}")
        self._put("tracing_on", "0")
        self._put("buffer_size_kb", "16384")
        self._put("events/enable", "0")
        self._put("events/kvm/enable", "1")
        self._put("trace_clock", "mono")
        self._marker = open(self.ROOT / "trace_marker", "w")

    def _put(self, name: str, value: str) -> None:
        (self.ROOT / name).write_text(value)

    def begin(self) -> None:
        self._put("trace", "")  # cleared
        self._put("tracing_on", "1")

    def mark(self, text: str) -> None:
        self._marker.write(f"PYVMM {text} at {time.perf_counter_ns()}\n")
        self._marker.flush()

    def save(self, name: str) -> None:
        self._put("tracing_on", "0")
        (self.directory / name).write_bytes((self.ROOT / "trace").read_bytes())


FTRACE: list[Ftrace] = []


def mark(text: str) -> None:
    if FTRACE:
        FTRACE[0].mark(text)


def install_hooks() -> None:
    real_run = served.ServedVcpu.run

    def traced_run(self: served.ServedVcpu) -> Any:
        entered = time.perf_counter_ns()
        exit = real_run(self)
        RUNS.append((entered, time.perf_counter_ns(), exit_key(exit)))
        return exit

    setattr(served.ServedVcpu, "run", traced_run)
    real_received = console_guest.Console._received

    def traced_received(self: console_guest.Console, data: bytes) -> None:
        OUTPUT.append((time.perf_counter_ns(), data))
        real_received(self, data)

    setattr(console_guest.Console, "_received", traced_received)
    time_ioctls()


class KvmStats:
    """A KVM object's binary statistics (single values; histograms left out)."""

    def __init__(self, object_fd: int) -> None:
        self.fd = fcntl.ioctl(object_fd, KVM_GET_STATS_FD, 0)
        header = os.pread(self.fd, 24, 0)
        _flags, name_size, count, _id, desc_offset, self.data_offset = struct.unpack(
            "6I", header)
        size = 16 + name_size
        raw = os.pread(self.fd, size * count, desc_offset)
        self.fields: list[tuple[str, int]] = []
        self.length = 0
        for index in range(count):
            _f, _exp, length, offset, _bucket = struct.unpack_from("IhHII", raw, index * size)
            name = raw[index * size + 16:(index + 1) * size].split(b"\0")[0].decode()
            if length == 1:
                self.fields.append((name, offset))
            self.length = max(self.length, offset + 8 * length)

    def read(self) -> dict[str, int]:
        data = os.pread(self.fd, self.length, self.data_offset)
        return {name: struct.unpack_from("Q", data, offset)[0] for name, offset in self.fields}

    def close(self) -> None:
        os.close(self.fd)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after
            if after[name] != before.get(name, 0)}


def machine_stats(vm: pyvmm.Machine) -> list[KvmStats]:
    built = vm._machine
    return [KvmStats(built.vm.fd)] + [KvmStats(vcpu.fd) for vcpu in built.vcpus]


def read_all(stats: list[KvmStats]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for index, source in enumerate(stats):
        prefix = "vm." if index == 0 else ""
        for name, value in source.read().items():
            key = prefix + name
            merged[key] = merged.get(key, 0) + value
    return merged


def runs_between(began: int, ended: int) -> dict[str, Any]:
    inside = [(e, r, k) for e, r, k in RUNS if e >= began and r <= ended]
    in_kvm = sum(r - e for e, r, _ in inside)
    kinds: dict[str, int] = {}
    for _, _, key in inside:
        name = key[0] if key[1] is None else f"{key[0]}@{key[1]:#x}"
        kinds[name] = kinds.get(name, 0) + 1
    longest = sorted((r - e for e, r, _ in inside), reverse=True)[:5]
    return {"kvm_runs": len(inside), "in_kvm_ms": in_kvm / 1e6,
            "wall_ms": (ended - began) / 1e6, "exits": kinds,
            "longest_runs_ms": [round(x / 1e6, 2) for x in longest]}


#: A terminal's cursor position report ("ESC [ row ; col R"), the answer to the "ESC [ 6 n"
#: busybox's line editor prints after its prompt and waits 20 ms for when Enter comes first.
CURSOR_REPORT = b"\x1b[1;5R"


def ask(vm: pyvmm.Machine, number: int) -> tuple[int, int]:
    mark(f"input {number}")
    written = time.perf_counter_ns()
    vm.console.write(f"echo r$(({number}*7))\n".encode())
    vm.console.expect(f"r{number * 7}".encode(), 60)
    mark(f"answer {number}")
    return written, time.perf_counter_ns()


def output_timeline(began: int, ended: int) -> str:
    return " ".join(f"{(t - began) / 1e6:.1f}:{data!r}" for t, data in OUTPUT
                    if began <= t <= ended)


def show(title: str, stats: dict[str, int], runs: dict[str, Any]) -> None:
    print(f"  -- {title}: wall {runs['wall_ms']:.1f} ms, {runs['kvm_runs']} KVM_RUNs, "
          f"{runs['in_kvm_ms']:.1f} ms inside KVM_RUN; longest {runs['longest_runs_ms']}")
    print(f"     exits to pyvmm: {runs['exits']}")
    print(f"     KVM counters: {stats}")


def timeline(began: int, ended: int, limit: int) -> None:
    rows = [(e, r, k) for e, r, k in RUNS if e >= began and r <= ended][:limit]
    previous = began
    for entered, returned, key in rows:
        print(f"     +{(entered - began) / 1e6:7.2f} ms (pyvmm {(entered - previous) / 1e3:6.0f} us)"
              f" KVM_RUN {(returned - entered) / 1e3:8.0f} us -> {key}")
        previous = returned


def anonymous_copy(directory: str, layout: Any) -> Any:
    """Guest RAM as anonymous memory (transparent huge pages where the host gives them:
    2 MiB nested page table entries) with the memory file's data copied in."""
    from pyvmm.kvm._ffi import address_of
    from pyvmm.memory import GuestMemory

    memory = GuestMemory.anonymous([(int(b), int(s)) for b, s, _ in layout],
                                   address_of=address_of)
    fd = os.open(os.path.join(directory, "memory.raw"), os.O_RDONLY)
    try:
        for region, (_, size, offset) in zip(memory.regions, layout):
            view = memoryview(region.buffer)
            for data, length in data_extents(fd, offset, offset + size):
                os.preadv(fd, [view[data - offset:data - offset + length]], data)
    finally:
        os.close(fd)
    return memory


def populate_write(vm: pyvmm.Machine, directory: Path) -> float:
    """MADV_POPULATE_WRITE of the memory file's data extents in the clone's RAM; ms."""
    import mmap
    began = time.perf_counter()
    fd = os.open(directory / "memory.raw", os.O_RDONLY)
    try:
        offset = 0  # the file holds the regions back to back (``memfile.write_memory``)
        for region in vm._machine.memory.regions:
            assert isinstance(region.buffer, mmap.mmap)
            for data, length in data_extents(fd, offset, offset + region.size):
                region.buffer.madvise(23, data - offset, length)  # MADV_POPULATE_WRITE
            offset += region.size
    finally:
        os.close(fd)
    return (time.perf_counter() - began) * 1e3


MSR_KVM_ASYNC_PF_EN = 0x4B564D02


def without_async_pf(real: Any) -> Any:
    """``kvm.state._set_msrs`` writing MSR_KVM_ASYNC_PF_EN as 0 (KVM then serves every
    nested page fault synchronously: no "page not present" for the guest to wait on)."""
    from pyvmm.kvm._ffi import ffi

    def set_msrs(vcpu: Any, saved: Any, tsc_slot: int | None, tsc_ticks: int) -> None:
        count = saved.nmsrs
        copy = ffi.new("struct kvm_msrs *", {"nmsrs": count, "entries": count})
        ffi.memmove(copy, saved, ffi.sizeof("struct kvm_msrs")
                    + count * ffi.sizeof("struct kvm_msr_entry"))
        for index in range(count):
            if copy.entries[index].index == MSR_KVM_ASYNC_PF_EN:
                copy.entries[index].data = 0
        real(vcpu, copy, tsc_slot, tsc_ticks)

    return set_msrs


def traced_restore(snapshot: Path, limit: int, variant: str) -> dict[str, float]:
    from pyvmm.snapshot import restore as restore_module

    from pyvmm.kvm import state as state_module

    real_map, real_advance = restore_module.map_memory, restore_module.Snapshot.clock_advance_ns  # type: ignore[attr-defined]
    real_set_msrs = state_module._set_msrs
    if variant == "no-apf":
        setattr(state_module, "_set_msrs", without_async_pf(real_set_msrs))
    if variant == "anon-copy":
        setattr(restore_module, "map_memory", anonymous_copy)
    if variant == "no-advance":  # the guest's clocks go on from the snapshot's moment
        setattr(restore_module.Snapshot, "clock_advance_ns", lambda self: 0)
    IOCTLS.clear()
    IOCTLS_ON[0] = True
    made_as = "no-spare" if variant == "no-spare" else "spare"
    try:
        with restore_variant(made_as):  # the spare VM closed first where it has none
            called = time.perf_counter_ns()
            vm = pyvmm.Machine.restore(snapshot, snapshot=True)
    finally:
        IOCTLS_ON[0] = False
        setattr(restore_module, "map_memory", real_map)
        setattr(restore_module.Snapshot, "clock_advance_ns", real_advance)
        setattr(state_module, "_set_msrs", real_set_msrs)
    ioctls = sorted(IOCTLS.items(), key=lambda item: -item[1][1])
    extra = populate_write(vm, snapshot) if variant == "populate-write" else 0.0
    stats = machine_stats(vm)
    try:
        before = read_all(stats)
        if FTRACE:
            FTRACE[0].begin()
        mark("start")
        started = time.perf_counter_ns()
        vm.start()
        if variant in ("late-input", "terminal-reply"):
            if variant == "terminal-reply":  # a read of its own: with more bytes behind it
                vm.console.write(CURSOR_REPORT)  # busybox takes it for an unknown key
            time.sleep(0.3)
            started = time.perf_counter_ns()
        written1, answered1 = ask(vm, 6)
        middle = read_all(stats)
        written2, answered2 = ask(vm, 8)
        after = read_all(stats)
    finally:
        if FTRACE:
            FTRACE[0].save(f"restore-{variant}-{len(RUNS)}.txt")
        stopping = time.perf_counter_ns()
        vm.stop()
        stopped = time.perf_counter_ns()
        for source in stats:
            source.close()
    print(f"\n(stop took {(stopped - stopping) / 1e6:.1f} ms)")
    print(f"\n== restore ({variant}): built in {(started - called) / 1e6:.1f} ms"
          f"{f' (populate-write {extra:.1f} ms)' if extra else ''}, 1st answer "
          f"{(answered1 - started) / 1e6:.1f} ms after start (input written at "
          f"+{(written1 - started) / 1e6:.1f}), 2nd {(answered2 - written2) / 1e6:.1f} ms ==")
    print("     build's ioctls (calls, ms): " + ", ".join(
        f"{what} {calls} {ns / 1e6:.1f}" for what, (calls, ns) in ioctls[:12])
        + f"; all {sum(ns for _, ns in IOCTLS.values()) / 1e6:.1f} ms")
    show("start -> 1st answer", delta(middle, before), runs_between(started, answered1))
    print(f"     output: {output_timeline(started, answered1)}")
    timeline(started, answered1, limit)
    show("2nd answer", delta(after, middle), runs_between(written2, answered2))
    print(f"     output: {output_timeline(written2, answered2)}")
    timeline(written2, answered2, limit)
    return {"build": (started - called) / 1e6, "first": (answered1 - started) / 1e6,
            "second": (answered2 - written2) / 1e6}


def create_vm_costs(runs: int = 5) -> None:
    """KVM_CREATE_VM and the VM's destruction (its fd closed), with no other VM in the
    process and with one held open (KVM enables virtualization on the CPUs for the
    first VM and disables it after the last)."""
    from pyvmm.kvm.system import Kvm

    kvm = Kvm()

    def cycle() -> tuple[float, float]:
        began = time.perf_counter_ns()
        vm = kvm.create_vm()
        made = time.perf_counter_ns()
        os.close(vm.fd)
        return (made - began) / 1e6, (time.perf_counter_ns() - made) / 1e6

    alone = [cycle() for _ in range(runs)]
    anchor = kvm.create_vm()
    held = [cycle() for _ in range(runs)]
    os.close(anchor.fd)
    kvm.close()
    for name, done in (("no other VM", alone), ("one VM held open", held)):
        print(f"KVM_CREATE_VM {name}: create {statistics.median(c for c, _ in done):.1f} ms, "
              f"destroy {statistics.median(d for _, d in done):.1f} ms (all: "
              + " ".join(f"{c:.1f}/{d:.1f}" for c, d in done) + ")", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--timeline", type=int, default=40)
    parser.add_argument("--variants", nargs="*", default=[], choices=("populate-write", "anon-copy", "no-advance", "late-input",
                                 "no-apf", "terminal-reply", "no-spare"))
    parser.add_argument("--ftrace", type=Path, default=None)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a killed run's lines too
    install_hooks()
    if args.ftrace is not None:
        FTRACE.append(Ftrace(args.ftrace))
    create_vm_costs()
    with tempfile.TemporaryDirectory(prefix="pyvmm-trace-") as where:
        work = Path(where)
        disk = work / "disk.img"
        disk.write_bytes(bytes(16 << 20))
        snapshot = work / "snap"
        vm = pyvmm.Machine(kernel=str(KERNEL), initrd=str(INITRD), memory=args.memory,
                           append="console=ttyS0 quiet", drives=[str(disk)], timeout=600)
        # A vCPU's ioctls wait for its KVM_RUN to return (the vCPU's mutex): a halted
        # vCPU's stats fd can't be had, so it is opened before the vCPUs run.
        stats = machine_stats(vm)
        with vm:  # started
            vm.console.expect(PROMPT, 300)
            print(f"== the booted guest's answers ({args.memory}) ==")
            if FTRACE:
                FTRACE[0].begin()
            for number in (5, 9):
                before = read_all(stats)
                written, answered = ask(vm, number)
                show(f"answer {number * 7}", delta(read_all(stats), before),
                     runs_between(written, answered))
                vm.console.expect(PROMPT, 60)
            if FTRACE:
                FTRACE[0].save("booted.txt")
            for source in stats:
                source.close()
            vm.snapshot(snapshot, stop=True)
            vm.wait(60)
        from pyvmm.snapshot.restore import checked_state
        saved = dict(checked_state(str(snapshot)).vcpus[0].msrs)
        print("saved MSRs: " + ", ".join(f"{index:#x}={saved.get(index, 0):#x}" for index in (
            0x6E0, 0x4B564D00, 0x4B564D01, MSR_KVM_ASYNC_PF_EN, 0x4B564D03, 0x4B564D04,
            0x4B564D05, 0x4B564D06)))
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.runs):
            for variant in ["plain", *args.variants]:
                results.setdefault(variant, []).append(
                    traced_restore(snapshot, args.timeline, variant))
        for variant, done in results.items():
            print(f"\n== {variant}, median of {args.runs} (ms): " + ", ".join(
                f"{name} {statistics.median(run[name] for run in done):.1f}"
                for name in done[0]))


if __name__ == "__main__":
    main()
