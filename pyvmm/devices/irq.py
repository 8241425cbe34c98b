"""Interrupt lines as devices see them: no KVM, just a level to set."""

from __future__ import annotations

from typing import Protocol


class InterruptLine(Protocol):
    """A level-sensitive line into the interrupt controller."""

    def set_level(self, high: bool) -> None:
        """Drive the line high (asserted) or low."""
