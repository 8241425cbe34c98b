"""``pyvmm inspect``: summary, registers, memory, kernel log and searches of a dump.

Human output uses rich; ``--json`` prints one JSON document for scripts.  Only
this package imports rich, so ``pyvmm run`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from typing import Any

import click

from pyvmm.cli.reporting import reports_errors
from pyvmm.vmm.control import request_dump
from pyvmm.dump import DumpError
from pyvmm.dump.core import CoreDump
from pyvmm.dump.pagewalk import PageWalkError, WalkStep
from pyvmm.dump.printk import read_log
from pyvmm.dump.state import GENERAL
from pyvmm.dump.symbols import load_symbols
from pyvmm.dump.view import GuestView

DUMP = click.argument("dump", type=click.Path(dir_okay=False))
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
CPU = click.option("--cpu", default=0, show_default=True, help="Which vCPU's registers to use.")


def _number(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise DumpError(f"{text!r} is not an address (use 0x... or decimal)") from None


def _console():
    # rich takes ~50 ms to import: only the table views pay for it, not --json.
    from rich.console import Console

    return Console()


def _emit(as_json: bool, data: Any, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(_console())


@click.group()
def inspect() -> None:
    """Read a guest memory dump written by 'pyvmm run --dump'.

    DUMP may also be the --control socket of a running pyvmm: the guest is
    paused just long enough to dump it, and the views show it as it runs.
    """


def _open(path: str) -> CoreDump:
    """A dump file, or a running VMM's --control socket (then: a live dump, now)."""
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        return CoreDump(path)
    directory = tempfile.mkdtemp(prefix="pyvmm-live-")
    live = os.path.join(directory, "live.core")
    try:
        request_dump(path, live)
        return CoreDump(live)
    finally:  # the mapping stays valid after the file is gone
        with contextlib.suppress(FileNotFoundError):
            os.unlink(live)
        os.rmdir(directory)


@inspect.command()
@DUMP
@AS_JSON
@reports_errors
def summary(dump: str, as_json: bool) -> None:
    """RAM ranges, vCPUs and what ended the run."""
    core = _open(dump)
    data = {"ranges": [{"start": r.paddr, "size": r.size} for r in core.ranges],
            "vcpus": [{"index": v.index, "rip": v.regs.get("rip", 0),
                       "rsp": v.regs.get("rsp", 0), "cr3": v.control.get("cr3", 0)}
                      for v in core.vcpus],
            "run": core.note}

    def render(console) -> None:
        from rich.table import Table

        if core.note:
            console.print(f"[bold]run:[/] {core.note.get('reason', '?')} "
                          f"(exit status {core.note.get('status', '?')})")
        table = Table(title="guest RAM")
        table.add_column("start")
        table.add_column("end")
        table.add_column("size")
        for r in core.ranges:
            table.add_row(f"{r.paddr:#x}", f"{r.paddr + r.size - 1:#x}",
                          f"{r.size / (1 << 20):.0f} MiB")
        console.print(table)
        vcpus = Table(title="vCPUs")
        for column in ("vCPU", "RIP", "RSP", "CR3"):
            vcpus.add_column(column)
        for v in core.vcpus:
            vcpus.add_row(str(v.index), f"{v.regs.get('rip', 0):#018x}",
                          f"{v.regs.get('rsp', 0):#018x}", f"{v.control.get('cr3', 0):#x}")
        console.print(vcpus)
    _emit(as_json, data, render)


@inspect.command()
@DUMP
@CPU
@AS_JSON
@reports_errors
def regs(dump: str, cpu: int, as_json: bool) -> None:
    """The registers of one vCPU."""
    vcpu = GuestView(_open(dump), cpu).vcpu
    if vcpu is None:
        raise DumpError("the dump has no vCPU state")
    data = {"vcpu": cpu, **{n: vcpu.regs.get(n, 0) for n in GENERAL}, **vcpu.control,
            "segments": {n: vars(s) for n, s in vcpu.segments.items()},
            "gdt": list(vcpu.gdt), "idt": list(vcpu.idt)}

    def render(console) -> None:
        from rich.table import Table

        table = Table(title=f"vCPU {cpu}", show_header=False)
        names = list(GENERAL) + list(vcpu.control)
        for i in range(0, len(names), 2):
            row = []
            for name in names[i:i + 2]:
                row += [f"[bold]{name}[/]", f"{vcpu.reg(name):#018x}"]
            table.add_row(*row)
        console.print(table)
        for name, s in vcpu.segments.items():
            console.print(f"{name:>3} selector {s.selector:#06x} base {s.base:#x} "
                          f"limit {s.limit:#x} flags {s.flags:#x}")
    _emit(as_json, data, render)


def _steps_as_data(steps: list[WalkStep]) -> list[dict[str, Any]]:
    return [{"level": s.level, "entry_address": s.entry_address, "entry": s.entry}
            for s in steps]


@inspect.command()
@DUMP
@click.argument("address")
@click.argument("length", default="256")
@click.option("--virt", is_flag=True, help="ADDRESS is virtual: walk the vCPU's page tables.")
@CPU
@AS_JSON
@reports_errors
def mem(dump: str, address: str, length: str, virt: bool, cpu: int, as_json: bool) -> None:
    """Hexdump guest memory at ADDRESS (physical, or virtual with --virt)."""
    view = GuestView(_open(dump), cpu)
    start, count = _number(address), _number(length)
    steps = []
    try:
        if virt:
            walk = view.walk(start)
            steps = _steps_as_data(walk.steps)
            data = view.read_virt(start, count)
        else:
            data = view.dump.read(start, count)
    except PageWalkError as error:  # show how far the walk got, then the error line
        if as_json:
            click.echo(json.dumps({"error": str(error), "steps": _steps_as_data(error.steps)}))
        else:
            for s in error.steps:
                click.echo(f"{s.level:>4} entry at {s.entry_address:#x} = {s.entry:#018x}",
                           err=True)
        raise
    result = {"address": start, "virtual": virt, "length": count, "hex": data.hex(),
              "walk": steps}
    if virt:
        result["physical"] = walk.paddr
        result["page_size"] = walk.page_size

    def render(console) -> None:
        for s in steps:
            console.print(f"[dim]{s['level']:>4} entry at {s['entry_address']:#x} = "
                          f"{s['entry']:#018x}[/]")
        if virt:
            console.print(f"[bold]{start:#x}[/] -> physical [bold]{walk.paddr:#x}[/] "
                          f"({walk.page_size >> 10} KiB page)")
        for offset in range(0, len(data), 16):
            row = data[offset:offset + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            console.print(f"[cyan]{start + offset:016x}[/]  {row.hex(' '):<47}  {text}",
                          highlight=False, markup=True, soft_wrap=True)
    _emit(as_json, result, render)


@inspect.command()
@DUMP
@click.option("--kernel", "kernel", type=click.Path(dir_okay=False),
              help="The guest's vmlinux (for its symbols).")
@click.option("--system-map", type=click.Path(dir_okay=False),
              help="The guest kernel's System.map.")
@CPU
@AS_JSON
@reports_errors
def dmesg(dump: str, kernel: str | None, system_map: str | None, cpu: int,
          as_json: bool) -> None:
    """The guest kernel's log (Linux 5.10+), found through its symbols."""
    if not (kernel or system_map):
        raise DumpError("dmesg needs the guest's symbols: --kernel vmlinux or "
                        "--system-map System.map")
    symbols = load_symbols(system_map or kernel)  # type: ignore[arg-type]
    if "prb" not in symbols:
        raise DumpError("no 'prb' symbol: not a Linux 5.10+ kernel's symbols")
    view = GuestView(_open(dump), cpu)
    records = read_log(view.read_virt, symbols["prb"])
    data = [{"seq": r.seq, "ts_nsec": r.ts_nsec, "level": r.level, "text": r.text}
            for r in records]

    def render(console) -> None:
        for record in records:
            console.print(record.line(), highlight=False, markup=False, soft_wrap=True)
    _emit(as_json, data, render)


@inspect.command()
@DUMP
@click.argument("pattern")
@click.option("--max", "maximum", default=100, show_default=True, type=click.IntRange(min=1),
              help="Stop after N hits.")
@AS_JSON
@reports_errors
def search(dump: str, pattern: str, maximum: int, as_json: bool) -> None:
    """Find PATTERN (text, or hex bytes as 0x...) in guest RAM."""
    core = _open(dump)
    if pattern.startswith("0x"):
        try:
            needle = bytes.fromhex(pattern[2:])
        except ValueError:
            raise DumpError(f"{pattern!r} is not hex bytes") from None
    else:
        needle = pattern.encode()
    if not needle:
        raise DumpError("empty pattern")
    hits = core.find(needle, maximum)

    def render(console) -> None:
        for hit in hits:
            console.print(f"{hit:#x}")
        if not hits:
            console.print("no match")
    _emit(as_json, {"pattern": needle.hex(), "hits": hits}, render)


@inspect.command()
@DUMP
@click.option("--min", "minimum", default=6, show_default=True, help="Shortest string.")
@click.option("--max", "maximum", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Stop after N.")
@AS_JSON
@reports_errors
def strings(dump: str, minimum: int, maximum: int, as_json: bool) -> None:
    """Printable ASCII strings in guest RAM, with their physical addresses."""
    found = _open(dump).strings(minimum, maximum)

    def render(_console) -> None:
        for address, text in found:
            click.echo(f"{address:#x} {text}")
    _emit(as_json, [{"address": a, "text": t} for a, t in found], render)
