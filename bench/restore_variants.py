"""Restores made as an earlier pyvmm made them, for benches that compare in one session.

``variant(name)`` is a context manager around a ``Machine.restore``: ``spare``
restores as pyvmm does (taking the spare VM its last clone's close made),
``no-spare`` as pyvmm did before it had one (the spare closed first, outside
the time measured: the restore makes its VM); ``no-working-set`` without
copying the pages the first clone wrote into the clone before it runs
(``pyvmm/snapshot/workingset.py``: the guest's writes copy them).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from pyvmm.snapshot import restore
from pyvmm.vmm import spare_vm

NAMES = ("spare", "no-spare", "no-working-set")


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name not in NAMES:
        raise ValueError(f"unknown variant {name}")
    if name == "no-spare":
        spare_vm.discard()
    if name != "no-working-set":
        yield
        return
    copy_ahead = getattr(restore, "copy_ahead")
    setattr(restore, "copy_ahead", lambda memory, runs: 0)
    try:
        yield
    finally:
        setattr(restore, "copy_ahead", copy_ahead)
