"""How a command reports the errors a user can cause: one line, the error's status.

Shared by ``pyvmm`` and its subcommand groups (``inspect``), which import it
from here rather than from ``pyvmm.cli.main``: the group imports them, so them
importing the group would be a cycle.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from pyvmm.errors import PyvmmError


def fail(error: PyvmmError) -> None:
    """Report ``error`` as one line on stderr and exit with its status."""
    click.echo(f"pyvmm: error: {error}", err=True)
    sys.exit(error.exit_status)


def unwinds_on_signals(command: Callable) -> Callable:
    """A command that starts things (back ends, sockets, temporary files): a fatal
    signal outside a running machine unwinds it, so they are cleaned up, and it exits
    128+N with one line."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pyvmm.vmm.signals import Signalled, signals_unwind

        try:
            with signals_unwind():
                return command(*args, **kwargs)
        except Signalled as stop:
            click.echo(f"\npyvmm: {stop}", err=True)
            sys.exit(stop.status)
    return wrapper


def reports_errors(command: Callable) -> Callable:
    """A command whose PyvmmErrors end as ``fail`` does: one line, the error's status."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PyvmmError as error:
            fail(error)
    return wrapper
