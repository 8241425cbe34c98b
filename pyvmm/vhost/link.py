"""What the frame links a NIC's back end talks through share (QEMU's stream framing
over passt's socket, a tap): the owner's event loop watches ``fileno()`` for
``wanted_events()``, and the link calls ``on_interest`` when those change."""

from __future__ import annotations

from typing import Callable


class WatchedLink:
    """A link whose wanted epoll events change as its buffers fill and drain."""

    on_interest: Callable[[int], None] | None
    #: The events last announced (``wanted_events()`` when they were).
    _interest: int

    def wanted_events(self) -> int:
        raise NotImplementedError

    def _interest_changed(self) -> None:
        """Tell the owner if the events this link wants are no longer those last told."""
        interest = self.wanted_events()
        if interest != self._interest:
            self._interest = interest
            if self.on_interest is not None:
                self.on_interest(interest)
