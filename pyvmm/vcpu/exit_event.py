"""The machine's exit event: the first reason to stop wins, and wakes whoever waits.

Devices, vCPU runners, the console and the event loop are each handed this
one object (as Firecracker hands its devices an exit ``EventFd``) instead of
callbacks that reach into the machine: what they can do is say why the
machine should stop, nothing more.  Safe from any thread and from signal
handlers (Python runs those between two bytecodes of the main thread, maybe
inside ``set``: hence a reentrant lock).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from pyvmm.exitstatus import StopReason


class ExitEvent:
    """Records the first ``StopReason`` and calls ``on_set`` (the event loop's wake-up)."""

    def __init__(self, on_set: Callable[[], None] = lambda: None) -> None:
        self._on_set = on_set
        self._lock = threading.RLock()
        self._reason: StopReason | None = None
        #: ``time.perf_counter()`` when the first reason came (for --stats).
        self.requested_at: float | None = None

    def set(self, reason: StopReason) -> None:
        """Stop the machine for ``reason``, unless an earlier reason already did (any thread)."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
                self.requested_at = time.perf_counter()
        self._on_set()

    def is_set(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> StopReason | None:
        return self._reason

    def amend(self, reason: StopReason) -> None:
        """Replace the recorded reason with a fuller account of it (after the stop)."""
        with self._lock:
            self._reason = reason

    def setter(self, reason: StopReason) -> Callable[[], None]:
        """A no-argument callback that stops the machine for ``reason`` (for a device)."""
        return lambda: self.set(reason)
