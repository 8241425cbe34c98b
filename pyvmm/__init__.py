"""pyvmm: a small virtual machine monitor in Python on Linux KVM."""

import time as _time

#: When the interpreter got as far as pyvmm, and the CPU time it took (``--stats``).
IMPORTED_AT = _time.perf_counter()
IMPORTED_CPU = _time.process_time()

__version__ = "0.1.0"
__all__ = ["__version__"]
