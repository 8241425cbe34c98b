"""``--gdb``'s value: ``[HOST:]PORT`` (TCP, 127.0.0.1 unless a host is given) or ``unix:PATH``.

Nothing heavier than ``os`` here: the machine schema checks the value at start-up.
"""

from __future__ import annotations

import os
from typing import NamedTuple

DEFAULT_HOST = "127.0.0.1"
#: Longest unix socket path (sun_path is 108 bytes, with its terminating NUL).
MAX_SOCKET_PATH = 107


class GdbAddress(NamedTuple):
    """Where to listen: ``unix`` (``path``) or TCP (``host``, ``port``)."""

    unix: bool
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.unix else f"{self.host}:{self.port}"


def parse_address(text: str) -> GdbAddress:
    """``[HOST:]PORT`` or ``unix:PATH``; ValueError with a one-line reason."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: needs a PATH")
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ValueError(f"a unix socket path is at most {MAX_SOCKET_PATH} bytes")
        return GdbAddress(True, path=path)
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a TCP port (1-65535); "
                         "use [HOST:]PORT or unix:PATH")
    return GdbAddress(False, host=host, port=int(port_text))
