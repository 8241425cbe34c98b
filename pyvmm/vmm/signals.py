"""The commands' signal handling: a signal stops the machine, it does not kill pyvmm.

Signals belong to the program, not to the library (a ``pyvmm.Machine`` may
run on any thread of someone else's process): ``pyvmm run`` and command
mode wrap ``BuiltMachine.run`` in ``signals_stop``.  Stopping on a signal is what
lets them restore the terminal, flush the disks and exit 128+N.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Iterator

from pyvmm.console.host import FATAL_SIGNALS
from pyvmm.exitstatus import StopReason
from pyvmm.vmm.machine import BuiltMachine


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
