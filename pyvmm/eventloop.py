"""An epoll loop whose subscribers own their fds (as rust-vmm's event-manager).

The main thread runs it over stdin, the wake-up eventfd the vCPU threads and
signal handlers write, and device eventfds (ioeventfd notifications); and
timers a device asks for from any thread (``call_at``: the RTC's interrupts).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from typing import Callable

#: Called with the epoll event mask when its fd is ready.
Handler = Callable[[int], None]


class EventLoop:
    """Dispatches readiness to handlers until told to stop or a deadline passes."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._stopped = False
        #: (monotonic time, order, callback): the timers, earliest first.
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._timer_lock = threading.Lock()
        # Written by other threads (and signal handlers) to wake the loop.
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Orders wake() against close(): a wake from another thread must not write to
        # the fd after it is closed (or reused).  Reentrant: a signal handler that
        # wakes may run on the main thread inside close().
        self._wake_lock = threading.RLock()
        self.add(self.wake_fd, self._drain_wake)

    def add(self, fd: int, handler: Handler, events: int = select.EPOLLIN) -> None:
        """Watch ``fd``; raises PermissionError for fds epoll can't watch (files)."""
        self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        """Watch ``fd`` for ``events`` from now on (EPOLLOUT while output waits)."""
        self._epoll.modify(fd, events)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def wake(self) -> None:
        """Make ``run`` look at its stop condition now (any thread; a no-op once closed)."""
        with self._wake_lock:
            if self.wake_fd >= 0:
                os.eventfd_write(self.wake_fd, 1)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop's thread once ``time.monotonic()`` reaches ``when``."""
        with self._timer_lock:
            heapq.heappush(self._timers, (when, next(self._timer_order), callback))
        self.wake()

    def _due_timers(self) -> float | None:
        """Run the timers that are due; seconds until the next one, or None."""
        while True:
            with self._timer_lock:
                if not self._timers:
                    return None
                when = self._timers[0][0]
                wait = when - time.monotonic()
                if wait > 0:
                    return wait
                callback = heapq.heappop(self._timers)[2]
            callback()

    def stop(self) -> None:
        self._stopped = True
        self.wake()

    def _drain_wake(self, _events: int) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass

    def run(self, deadline: float | Callable[[], float | None] | None = None,
            tick: Callable[[], float | None] | None = None) -> bool:
        """Run until ``stop()``; return False if ``deadline`` (monotonic) passed first.

        A callable ``deadline`` is asked each round (None: none for now), so a
        deadline can move (gdb holding the guest stops ``--timeout``'s clock).

        ``tick`` runs after each round and may return a wait bound in seconds
        (for work that is not fd-driven, like feeding a file to the console).
        """
        while not self._stopped:
            timeout: float | None = None
            due = deadline() if callable(deadline) else deadline
            if due is not None:
                timeout = due - time.monotonic()
                if timeout <= 0:
                    return False
            for bound in (tick() if tick is not None else None, self._due_timers()):
                if bound is not None:
                    timeout = bound if timeout is None else min(timeout, bound)
            for fd, events in self._epoll.poll(-1 if timeout is None else timeout):
                handler = self._handlers.get(fd)
                if handler is not None:
                    handler(events)
        return True

    def close(self) -> None:
        with self._wake_lock:
            fd, self.wake_fd = self.wake_fd, -1  # a late wake() must not write to a reused fd
            self._epoll.close()
            os.close(fd)
