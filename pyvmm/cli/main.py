"""The ``pyvmm`` command line: click group, options -> MachineConfig -> Machine.

Errors a user can cause are ``PyvmmError``s: one line on stderr, the error's
exit status, no traceback.  ``inspect`` is loaded only when asked for, so a
plain ``pyvmm run`` imports neither rich nor pyelftools.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import importlib.util
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from pyvmm import __version__
from pyvmm.cli.reporting import reports_errors, unwinds_on_signals
from pyvmm.cli.options import (command_options, command_options_given, effective_config,
                               machine_options, restore_options_given)
from pyvmm.errors import ConfigError, PyvmmError
from pyvmm.exitstatus import ExitStatus

if TYPE_CHECKING:
    from pyvmm.config.command import CommandOptions

#: Subcommands imported on first use: name -> (module, attribute).
_LAZY_COMMANDS = {"inspect": ("pyvmm.cli.inspect", "inspect"),
                  "check": ("pyvmm.cli.check", "check")}


class _LazyGroup(click.Group):
    """A group whose heavier subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | self._available())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self._available():
            module_name, attribute = _LAZY_COMMANDS[name]
            command = getattr(importlib.import_module(module_name), attribute)
        return command

    @staticmethod
    def _available() -> set[str]:
        available = set()
        for name, (module, _) in _LAZY_COMMANDS.items():
            try:
                if importlib.util.find_spec(module) is not None:
                    available.add(name)
            except ModuleNotFoundError:
                pass
        return available


def entry() -> None:
    """The ``pyvmm`` command: ``main``, then exit without Python's interpreter teardown.

    A run has finished everything that matters (console output, terminal
    modes, disk flushes, dumps) before ``main`` returns; finalizing the
    interpreter would add tens of milliseconds to every exit, which a script
    waiting on pyvmm pays.  atexit handlers still run.
    """
    try:
        main()
        status = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyvmm")
def main() -> None:
    """pyvmm: boot Linux kernels on KVM from the command line."""


class _RunCommand(click.Command):
    """``run``, which tells a bare ``--`` (no command after it) from no ``--`` at all.

    click drops the ``--``; ``pyvmm run -k K --`` would then boot a plain VM.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["pyvmm.bare_double_dash"] = bool(args) and args[-1] == "--" and not (
            len(args) > 1 and args[-2] in self._value_options())  # ``-a --`` is a value
        return super().parse_args(ctx, args)

    def _value_options(self) -> set[str]:
        return {name for param in self.params if isinstance(param, click.Option)
                and not param.is_flag and not param.count
                for name in (*param.opts, *param.secondary_opts)}


@main.command(cls=_RunCommand)
@machine_options
@click.option("--on-reboot", type=click.Choice(("exit", "restart")), default="exit",
              show_default=True,
              help="When the guest reboots: exit 0, or restart it with the same machine.")
@click.option("--verbose", "-v", is_flag=True, help="Log what pyvmm does to stderr.")
@click.option("--restore", metavar="DIR", type=click.Path(file_okay=False),
              help="Run a new machine restored from the snapshot in DIR ('pyvmm snapshot', "
                   "vm.snapshot): no kernel; only per-run options (--timeout, --control, "
                   "--dump, --dump-on, --gdb; --snapshot: its disks under throwaway "
                   "overlays) may be given.")
@click.option("--changed-disks", is_flag=True,
              help="With --restore: take the snapshot's disk images even if they changed "
                   "since (by default such a restore is refused).")
@click.option("--stats", type=click.Choice(("text", "json")), is_flag=False,
              flag_value="text", default=None,
              help="At exit, print start-up times and vCPU exits by kind and port/address "
                   "with the time serving them to stderr (--stats=json: one JSON line).")
@command_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@reports_errors
@unwinds_on_signals
def run(ctx: click.Context, on_reboot: str, verbose: bool, restore: str | None,
        changed_disks: bool, stats: str | None, command: tuple[str, ...],
        **params: Any) -> None:
    """Boot a kernel and show its serial console; or, given a COMMAND, run it.

    \b
    pyvmm run -k KERNEL [options] -- CMD [ARGS...] runs CMD in the guest on the
    host's own files (its / over virtio-fs), as you, in this directory; its
    stdout, stderr and stdin are this pyvmm's, and pyvmm exits with its status
    (255 and a line on stderr if the guest or pyvmm fails first).

    \b
    Exit status: 0 the guest powered off or rebooted; odd N the guest wrote
    (N-1)/2 to the debug-exit port 0xf4; 2 bad input; 4 host can't run VMs;
    6 pyvmm error; 8 guest triple fault; 10 KVM internal/emulation error;
    12 guest panic; 124 --timeout; 128+N killed by signal N.  Console:
    Ctrl-A x quits, Ctrl-A h helps.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="pyvmm: %(message)s", stream=sys.stderr)
    command_mode = command_options_given(params)
    snapshot = None
    if restore is not None:
        if command or ctx.meta.get("pyvmm.bare_double_dash"):
            raise ConfigError("--restore: a restored machine runs as saved; no command mode")
        if on_reboot != "exit":
            raise ConfigError("--restore: --on-reboot restart would restore again; not taken")
        from pyvmm.snapshot.restore import load_snapshot

        snapshot = load_snapshot(restore, changed_disks, **restore_options_given(ctx, params))
    elif changed_disks:
        raise ConfigError("--changed-disks: only with --restore")
    if command:
        _run_command(ctx, params, command, command_mode, verbose, stats)
    if ctx.meta.get("pyvmm.bare_double_dash"):
        raise ConfigError("nothing after --: give the command to run (pyvmm run -k KERNEL "
                          "-- CMD [ARGS...]), or leave out -- to boot the kernel")
    given = [name for name, value in (("--rw", command_mode.rw),
                                      ("--modules", command_mode.modules),
                                      ("--user", command_mode.user)) if value]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for command mode; give the command "
                          "after -- (pyvmm run -k KERNEL ... -- CMD [ARGS...])")
    run_stats = None
    if stats:
        from pyvmm import IMPORTED_AT, IMPORTED_CPU
        from pyvmm.vcpu.stats import RunStats

        run_stats = RunStats()
        run_stats.mark("pyvmm_imported", IMPORTED_AT, IMPORTED_CPU)
        run_stats.mark("cli_parsed")
    config = effective_config(ctx, params) if snapshot is None else snapshot.config
    from pyvmm.vmm.builder import build_machine
    from pyvmm.vmm.signals import signals_stop

    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    # What is alive when a signal unwinds us: the running machine, or between two
    # machines (--on-reboot restart) the disks carried from one to the next.
    machine = disks = None
    try:
        while True:
            machine = build_machine(config, stats=run_stats, snapshot=snapshot, disks=disks)
            disks = None  # the machine's now
            if run_stats is not None:
                run_stats.mark("machine_built")
            with signals_stop(machine):
                reason = machine.run()
            if reason.kind != "reboot" or on_reboot != "restart":
                break
            disks = machine.carry_disks()  # snapshot=on overlays last until pyvmm exits
            machine.close()
            machine = None
            click.echo("\npyvmm: the guest rebooted; restarting it", err=True)
            if deadline is not None:  # --timeout bounds the whole run, restarts included
                config = dataclasses.replace(
                    config, timeout=max(deadline - time.monotonic(), 0.001))
    except BaseException:
        if machine is not None:
            machine.close()
        if disks is not None:
            disks.close()
        raise
    machine.close_at_exit()
    if reason.status != ExitStatus.OK or verbose:
        click.echo(f"\npyvmm: {reason.message}", err=True)
    if run_stats is not None:
        run_stats.note_stop(machine.stop_requested_at)
        click.echo(run_stats.json_line() if stats == "json" else run_stats.text(), err=True)
    sys.exit(reason.status)


def _run_command(ctx: click.Context, params: dict[str, Any], command: tuple[str, ...],
                 options: CommandOptions, verbose: bool, stats: str | None = None) -> None:
    """Command mode: exit with the command's status, or 255 and one line."""
    from pyvmm.command.run import FAILED, run_command

    run_stats = None
    if stats:
        from pyvmm.vcpu.stats import RunStats

        run_stats = RunStats()
    try:
        config = effective_config(ctx, params)
        user_append = params.get("cmdline") if ctx.get_parameter_source("cmdline") == \
            click.core.ParameterSource.COMMANDLINE else None
        status = run_command(config, command, options, user_append=user_append,
                             verbose=verbose, stats=run_stats)
    except PyvmmError as error:
        click.echo(f"pyvmm: error: {error}", err=True)
        status = FAILED
    if run_stats is not None:
        click.echo(run_stats.json_line() if stats == "json" else run_stats.text(), err=True)
    sys.exit(status)


@main.command()
@click.argument("socket_path", metavar="SOCKET")
@click.argument("directory", metavar="DIR")
@click.option("--stop", is_flag=True, help="Stop the guest once the snapshot is written.")
@reports_errors
def snapshot(socket_path: str, directory: str, stop: bool) -> None:
    """Snapshot the guest of a running 'pyvmm run --control SOCKET' into directory DIR.

    The guest is paused while its state and RAM are written, then runs on (or,
    with --stop, stops).  'pyvmm run --restore DIR' runs a copy of it.
    """
    from pyvmm.vmm.control import request_snapshot

    seconds, ram, written = request_snapshot(socket_path, directory, stop)
    click.echo(f"snapshot written to {os.path.abspath(directory)}: guest paused "
               f"{seconds * 1000:.1f} ms, {ram >> 20} MiB of RAM ({written} bytes not zero)")


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("socket_path", metavar="SOCKET")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--wait", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              metavar="SECONDS", help="How long to keep trying while the guest still boots.")
@reports_errors
def exec_command(socket_path: str, command: tuple[str, ...], wait: float) -> None:
    """Run COMMAND in the running guest of 'pyvmm run -k K --control SOCKET -- CMD'.

    It runs as CMD does (same user, directory and environment), with this
    stdin; its stdout and stderr come back apart and pyvmm exits with its
    status (255 and one line if it could not be run).  The guest is reached
    over vsock: command mode gives itself one where /dev/vhost-vsock opens.
    """
    from pyvmm.command.exec import exec_in_guest, fd_writer, read_fd
    from pyvmm.vmm.control import request_vsock

    cid = request_vsock(socket_path)
    sys.exit(exec_in_guest(cid, command, read_fd(0), fd_writer(1), fd_writer(2), wait=wait))


@main.group()
def config() -> None:
    """Machine configuration files."""


@config.command("show")
@machine_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
@reports_errors
def config_show(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Print the machine that 'pyvmm run' would build from these options."""
    machine = effective_config(ctx, params)
    from pyvmm.cli.show_config import show_config

    show_config(machine, as_json)
