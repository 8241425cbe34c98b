"""Restores made as an earlier pyvmm made them, for benches that compare in one session.

``variant(name)`` is a context manager around a ``Machine.restore``: ``branch``
restores as this pyvmm does (taking the spare VM its last clone's close made),
``main`` as before it (the spare closed first, outside the time measured: the
restore makes its VM).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from pyvmm.vmm import spare_vm

NAMES = ("branch", "main")


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name not in NAMES:
        raise ValueError(f"unknown variant {name}")
    if name == "main":
        spare_vm.discard()
    yield
