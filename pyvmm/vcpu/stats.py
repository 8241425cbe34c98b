"""``pyvmm run --stats``: where a run's time went, exit by exit, and how long start-up took.

Each vCPU thread counts into its own ``ExitCounter`` (no lock on the hot
path); ``RunStats`` merges them at exit.  An exit is keyed by its kind and,
for port and MMIO accesses, its port or address, so the report shows which
device register the guest hammers.  The time per exit is the VMM's: from
KVM_RUN returning to the next KVM_RUN, i.e. decoding and serving the exit.

Start-up is measured from the process's spawn (its start time in
``/proc/self/stat``, 10 ms resolution), so interpreter start and the
editable install's ``.pth`` processing count too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyvmm.kvm.exits import IoIn, IoOut, MmioRead, MmioWrite, VmExit

#: A counted exit: (kind, port or MMIO address, or None for other kinds).
ExitKey = tuple[str, "int | None"]
#: How many (kind, address) rows the text report lists.
TEXT_ROWS = 12
#: Kinds counted without an exit to Python: KVM coalesced the write or absorbed it (a
#: virtio InterruptACK), or C answered it.
NO_EXIT_KINDS = ("pio-out-coalesced", "pio-in-c", "pio-out-c", "mmio-read-c", "mmio-write-kvm")


def exit_key(exit: VmExit) -> ExitKey:
    """What an exit is counted as."""
    if isinstance(exit, IoOut):
        return ("pio-out", exit.port)
    if isinstance(exit, IoIn):
        return ("pio-in", exit.port)
    if isinstance(exit, MmioWrite):
        return ("mmio-write", exit.addr)
    if isinstance(exit, MmioRead):
        return ("mmio-read", exit.addr)
    return (type(exit).__name__.lower(), None)


class ExitCounter:
    """One vCPU's exits: count and nanoseconds spent serving, per key."""

    def __init__(self) -> None:
        self.exits: dict[ExitKey, list[int]] = {}
        #: Nanoseconds inside KVM_RUN (the guest running, or KVM serving in-kernel).
        self.in_kvm_ns = 0

    def add_uncounted(self, key: ExitKey, count: int) -> None:
        """Accesses served without an exit to Python (coalesced, or in C): counted, not timed."""
        if count:
            entry = self.exits.setdefault(key, [0, 0])
            entry[0] += count

    def add(self, key: ExitKey, serve_ns: int) -> None:
        entry = self.exits.get(key)
        if entry is None:
            self.exits[key] = [1, serve_ns]
        else:
            entry[0] += 1
            entry[1] += serve_ns


#: The key of the one JSON object ``--stats=json`` prints on a line of stderr.
JSON_KEY = "pyvmm_stats"


def read_json_stats(stderr: str) -> dict[str, Any] | None:
    """The ``--stats=json`` report in a run's stderr (None if absent): for benches and tests."""
    import json

    prefix = '{"' + JSON_KEY + '"'
    for line in stderr.splitlines():
        if line.startswith(prefix):
            report: dict[str, Any] = json.loads(line)[JSON_KEY]
            return report
    return None


def _row(count: int, ns: int) -> dict[str, Any]:
    return {"count": count, "total_us": round(ns / 1000, 1),
            "mean_us": round(ns / count / 1000, 2)}


def process_age() -> float:
    """Seconds since this process was spawned (fork/exec), from /proc (10 ms steps)."""
    with open("/proc/self/stat", "rb") as stream:
        stat = stream.read()
    # Fields after the command name (which may hold spaces) start at ')'.
    start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class RunStats:
    """Start-up milestones and merged exit counts of one ``pyvmm run``."""

    #: perf_counter() value of the process's spawn (estimated from /proc).
    spawned: float = field(default_factory=lambda: time.perf_counter() - process_age())
    #: Milestones as (name, perf_counter()), in order.
    milestones: list[tuple[str, float]] = field(default_factory=list)
    counters: list[ExitCounter] = field(default_factory=list)
    first_run: float | None = None
    #: CPU seconds the process had used at each milestone (less noisy than wall time).
    cpu: dict[str, float] = field(default_factory=dict)
    #: Seconds from the guest's (or a signal's) stop request to the report.
    stopping: float | None = None
    #: Devices' own counters by name (a NIC's frames, wake-ups and interrupts), read
    #: when the report is made.
    device_counts: dict[str, Callable[[], dict[str, int]]] = field(default_factory=dict)

    def mark(self, name: str, when: float | None = None, cpu: float | None = None) -> None:
        """Note that start-up reached ``name`` (now, or at ``when`` having used ``cpu``)."""
        self.milestones.append((name, time.perf_counter() if when is None else when))
        self.cpu[name] = time.process_time() if cpu is None else cpu

    def counter(self) -> ExitCounter:
        """A new counter for one vCPU thread."""
        counter = ExitCounter()
        self.counters.append(counter)
        return counter

    def note_first_run(self) -> None:
        """Called by each vCPU thread before its first KVM_RUN; the first one counts."""
        if self.first_run is None:
            self.first_run = time.perf_counter()
            self.cpu["first_kvm_run"] = time.process_time()

    def note_stop(self, requested_at: float | None) -> None:
        """The stop was asked for at ``requested_at``; pyvmm has finished with the VM now."""
        self.stopping = None if requested_at is None else time.perf_counter() - requested_at

    def merged(self) -> dict[ExitKey, list[int]]:
        total: dict[ExitKey, list[int]] = {}
        for counter in list(self.counters):
            for key, (count, ns) in list(counter.exits.items()):
                entry = total.setdefault(key, [0, 0])
                entry[0] += count
                entry[1] += ns
        return total

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--stats json``: seconds from spawn, exits by kind and address."""
        startup = {name: round(when - self.spawned, 6) for name, when in self.milestones}
        if self.first_run is not None:
            startup["first_kvm_run"] = round(self.first_run - self.spawned, 6)
        merged = sorted(self.merged().items(), key=lambda item: -item[1][1])
        by_kind: dict[str, list[int]] = {}
        for (kind, _), (count, ns) in merged:
            entry = by_kind.setdefault(kind, [0, 0])
            entry[0] += count
            entry[1] += ns
        return {"startup_s": startup,
                "startup_cpu_s": {name: round(seconds, 6) for name, seconds in self.cpu.items()},
                "stopping_s": None if self.stopping is None else round(self.stopping, 6),
                "exits": sum(count for kind, (count, _) in by_kind.items()
                             if kind not in NO_EXIT_KINDS),
                "without_exit": sum(count for kind, (count, _) in by_kind.items()
                                    if kind in NO_EXIT_KINDS),
                "in_kvm_run_s": round(sum(c.in_kvm_ns for c in self.counters) / 1e9, 6),
                "by_kind": {kind: _row(count, ns) for kind, (count, ns) in by_kind.items()},
                "devices": {name: counts() for name, counts in self.device_counts.items()},
                "by_address": [{"kind": kind, "address": addr, **_row(count, ns)}
                               for (kind, addr), (count, ns) in merged]}

    def json_line(self) -> str:
        import json  # only for --stats=json: a plain run does not pay for it

        return json.dumps({JSON_KEY: self.as_dict()}, separators=(",", ":"))

    def text(self) -> str:
        """The human-readable summary printed to stderr at exit."""
        data = self.as_dict()
        lines = ["pyvmm stats: start-up (seconds from spawn): " + ", ".join(
            f"{name} {seconds:.3f}" for name, seconds in data["startup_s"].items())
            + f" (CPU {data['startup_cpu_s'].get('first_kvm_run', 0):.3f} s)"]
        if self.stopping is not None:
            lines.append(f"pyvmm stats: {self.stopping * 1000:.1f} ms from the stop request "
                         "to this report")
        served = sum(kind["total_us"] for kind in data["by_kind"].values())
        lines.append(f"pyvmm stats: {data['exits']} exits to pyvmm, {served / 1e6:.3f} s "
                     f"serving them, {data['in_kvm_run_s']:.3f} s in KVM_RUN; "
                     f"{data['without_exit']} accesses without an exit to Python "
                     "(coalesced, or answered in C: not timed)")
        lines.append(f"  {'kind':17} {'port/addr':>12} {'count':>9} {'total ms':>10} "
                     f"{'mean us':>9}")
        for kind, row in sorted(data["by_kind"].items(), key=lambda item: -item[1]["total_us"]):
            lines.append(f"  {kind:17} {'(all)':>12} {row['count']:9d} "
                         f"{row['total_us'] / 1000:10.1f} {row['mean_us']:9.1f}")
        for row in data["by_address"][:TEXT_ROWS]:
            if row["address"] is None:
                continue
            lines.append(f"  {row['kind']:17} {row['address']:#12x} {row['count']:9d} "
                         f"{row['total_us'] / 1000:10.1f} {row['mean_us']:9.1f}")
        for name, counts in data["devices"].items():
            lines.append(f"pyvmm stats: {name}: " + ", ".join(
                f"{what} {count}" for what, count in counts.items()))
        return "\n".join(lines)
