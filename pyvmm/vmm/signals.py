"""The commands' signal handling: a signal stops the machine, it does not kill pyvmm.

Signals belong to the program, not to the library (a ``pyvmm.Machine`` may
run on any thread of someone else's process): ``pyvmm run`` and command
mode wrap ``BuiltMachine.run`` in ``signals_stop``.  Stopping on a signal is what
lets them restore the terminal, flush the disks and exit 128+N.  Before and
after that, ``signals_unwind`` turns the same signals into an exception, so the
back ends, sockets and temporary files already made are cleaned up on the way
out instead of left behind by the signal's default action.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Iterator

from typing import TYPE_CHECKING

from pyvmm.console.host import FATAL_SIGNALS
from pyvmm.exitstatus import ExitStatus, StopReason

if TYPE_CHECKING:
    from pyvmm.vmm.machine import BuiltMachine


class Signalled(BaseException):
    """A fatal signal came while no machine ran to stop (a BaseException: ``except
    Exception`` on the way out does not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.status = ExitStatus.SIGNAL_BASE + signum


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """While inside: each of FATAL_SIGNALS raises ``Signalled`` in the main thread, so
    ``finally`` blocks run.  The previous handlers come back on leaving."""
    def unwind(signum: int, _frame: FrameType | None) -> None:
        raise Signalled(signum)

    previous = {signum: signal.signal(signum, unwind) for signum in FATAL_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_stop(machine: BuiltMachine) -> Iterator[None]:
    """While inside: each of FATAL_SIGNALS stops ``machine``, SIGUSR1 asks it for a live dump.

    The previous handlers come back on leaving.  Main thread only (Python's rule).
    """
    def stop_on_signal(signum: int, _frame: FrameType | None) -> None:
        machine.request_stop(StopReason.signal(signum, signal.Signals(signum).name))

    def usr1(_signum: int, _frame: FrameType | None) -> None:
        machine.request_live_dump()

    previous = {signum: signal.signal(signum, stop_on_signal) for signum in FATAL_SIGNALS}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, usr1)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
