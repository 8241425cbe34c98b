"""The kernel command line: validated against the kernel's limit, NUL-terminated."""

from __future__ import annotations

from pyvmm.errors import LoaderError
from pyvmm.memory import GuestMemory


def write_cmdline(memory: GuestMemory, cmdline: str, max_size: int, address: int,
                  area_size: int) -> tuple[int, int]:
    """Write ``cmdline`` at ``address``; return (address, length without the NUL).

    ``max_size`` is the kernel's limit (0: the protocol's old 255), ``area_size``
    the room the platform's layout leaves there (the loader knows neither).
    """
    if "\0" in cmdline:
        raise LoaderError("the kernel command line contains a NUL character")
    try:
        data = cmdline.encode("ascii")
    except UnicodeEncodeError:
        raise LoaderError("the kernel command line must be ASCII") from None
    limit = min(max_size or 255, area_size - 1)
    if len(data) > limit:
        raise LoaderError(f"the kernel command line is {len(data)} bytes; this kernel "
                          f"accepts at most {limit}")
    memory.write(address, data + b"\0")
    return address, len(data)
