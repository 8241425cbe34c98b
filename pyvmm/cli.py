"""The ``pyvmm`` command line: click group, options -> MachineConfig -> Machine.

Errors a user can cause are ``PyvmmError``s: one line on stderr, the error's
exit status, no traceback.  ``inspect`` is loaded only when asked for, so a
plain ``pyvmm run`` imports neither rich nor pyelftools.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from pyvmm import __version__
from pyvmm.config import (CPU_POLICIES, DEFAULT_CMDLINE, MachineConfig, parse_drive,
                          parse_size)
from pyvmm.errors import PyvmmError
from pyvmm.exitstatus import ExitStatus

#: Subcommands imported on first use: name -> (module, attribute).
_LAZY_COMMANDS = {"inspect": ("pyvmm.inspect.cli", "inspect")}


class _LazyGroup(click.Group):
    """A group whose heavier subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | self._available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self._available():
            import importlib

            module_name, attribute = _LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module_name), attribute)
        return command

    @staticmethod
    def _available() -> set[str]:
        import importlib.util

        available = set()
        for name, (module, _) in _LAZY_COMMANDS.items():
            try:
                if importlib.util.find_spec(module) is not None:
                    available.add(name)
            except ModuleNotFoundError:
                pass
        return available


def _fail(error: PyvmmError) -> None:
    click.echo(f"pyvmm: error: {error}", err=True)
    sys.exit(error.exit_status)


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except PyvmmError as exc:
            self.fail(str(exc), param, ctx)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyvmm")
def main() -> None:
    """pyvmm: boot Linux kernels on KVM from the command line."""


@main.command()
@click.option("--kernel", "-k", required=True, type=click.Path(dir_okay=False),
              help="Kernel to boot: a bzImage.")
@click.option("--initrd", "-i", type=click.Path(dir_okay=False),
              help="Initial ramdisk (e.g. a cpio archive) handed to the kernel.")
@click.option("--append", "-a", "cmdline", default=None, metavar="CMDLINE",
              help=f"Kernel command line (default: {DEFAULT_CMDLINE!r}).")
@click.option("--memory", "-m", type=_SizeType(), default="512M", show_default=True,
              help="Guest RAM, e.g. 512M or 2G (a bare number is MiB).")
@click.option("--cpus", "-c", type=int, default=1, show_default=True,
              help="Number of vCPUs.")
@click.option("--timeout", "-t", type=float, default=None, metavar="SECONDS",
              help="Stop the guest after SECONDS and exit 124.")
@click.option("--cpu", "cpu_policy", type=click.Choice(CPU_POLICIES), default="auto",
              show_default=True,
              help="CPU features shown to the guest: host (all KVM supports), compat "
                   "(hide what software emulation can't run), auto (compat on a "
                   "kvm_pvm host, else host).")
@click.option("--drive", "-d", "drives", multiple=True, metavar="SPEC",
              help="A virtio-block disk: path=IMG[,readonly=on][,cache=none|writeback]"
                   "[,serial=ID].  Repeat for vda, vdb, ...")
@click.option("--virtio-console/--no-virtio-console", default=True, show_default=True,
              help="Give the guest a virtio console (hvc0); with console=hvc0 on the "
                   "command line it takes the terminal.")
@click.option("--verbose", "-v", is_flag=True, help="Log what pyvmm does to stderr.")
def run(kernel: str, initrd: str | None, cmdline: str | None, memory: int, cpus: int,
        timeout: float | None, cpu_policy: str, drives: tuple[str, ...],
        virtio_console: bool, verbose: bool) -> None:
    """Boot a kernel and show its serial console.

    \b
    Exit status: 0 the guest powered off or rebooted; odd N the guest wrote
    (N-1)/2 to the debug-exit port 0xf4; 2 bad input; 4 host can't run VMs;
    6 pyvmm error; 8 guest triple fault; 10 KVM internal/emulation error;
    124 --timeout; 128+N killed by signal N.  Console: Ctrl-A x quits,
    Ctrl-A h helps.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="pyvmm: %(message)s", stream=sys.stderr)
    try:
        config = MachineConfig(kernel=kernel, initrd=initrd,
                               cmdline=DEFAULT_CMDLINE if cmdline is None else cmdline,
                               memory=memory, cpus=cpus, timeout=timeout,
                               cpu_policy=cpu_policy,
                               drives=tuple(parse_drive(d) for d in drives),
                               virtio_console=virtio_console)
        from pyvmm.machine import build_machine

        machine = build_machine(config)
        reason = machine.run()
    except PyvmmError as error:
        _fail(error)
        return
    if reason.status != ExitStatus.OK or verbose:
        click.echo(f"\npyvmm: {reason.message}", err=True)
    sys.exit(reason.status)
