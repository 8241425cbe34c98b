"""pyvmm: a small virtual machine monitor in Python on Linux KVM.

The library API (``pyvmm.Machine``, ``Outcome``, ``Console``, ``run_command``) lives
in ``pyvmm.api`` and is imported on first use, so ``import pyvmm`` (and with
it every ``pyvmm`` command's start-up) stays as cheap as it was.
"""

from __future__ import annotations

import time as _time
from typing import TYPE_CHECKING, Any

#: When the interpreter got as far as pyvmm, and the CPU time it took (``--stats``).
IMPORTED_AT = _time.perf_counter()
IMPORTED_CPU = _time.process_time()

from pyvmm.version import VERSION as __version__
__all__ = ["__version__", "Machine", "Outcome", "Console", "run_command"]

if TYPE_CHECKING:
    from pyvmm.api import Console, Machine, Outcome, run_command


def __getattr__(name: str) -> Any:
    if name in ("Machine", "Outcome", "Console", "run_command"):
        from pyvmm import api

        return getattr(api, name)
    raise AttributeError(f"module 'pyvmm' has no attribute {name!r}")
