"""The kernel command line: validated against the kernel's limit, NUL-terminated."""

from __future__ import annotations

from pyvmm.arch.x86_64 import layout
from pyvmm.errors import LoaderError
from pyvmm.memory import GuestMemory


def write_cmdline(memory: GuestMemory, cmdline: str, max_size: int) -> tuple[int, int]:
    """Write ``cmdline`` at CMDLINE_START; return (address, length without the NUL)."""
    if "\0" in cmdline:
        raise LoaderError("the kernel command line contains a NUL character")
    try:
        data = cmdline.encode("ascii")
    except UnicodeEncodeError:
        raise LoaderError("the kernel command line must be ASCII") from None
    limit = min(max_size or 255, layout.CMDLINE_MAX_SIZE - 1)
    if len(data) > limit:
        raise LoaderError(f"the kernel command line is {len(data)} bytes; this kernel "
                          f"accepts at most {limit}")
    memory.write(layout.CMDLINE_START, data + b"\0")
    return layout.CMDLINE_START, len(data)
