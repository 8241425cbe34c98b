"""Debian's packaged kernel on this host, whichever release apt installed last.

Naming one release (``6.1.0-56``) let the tests that use it skip silently
once an upgrade replaced it; they follow the installed one instead.
"""

from __future__ import annotations

import re
from pathlib import Path


def _release_order(path: Path) -> list:
    release = path.name.removeprefix("vmlinuz-")
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"[.-]", release)]


def debian_kernel() -> Path | None:
    """The newest ``/boot/vmlinuz-*`` that has its modules in /lib/modules, or None."""
    found = [path for path in Path("/boot").glob("vmlinuz-*")
             if Path("/lib/modules", path.name.removeprefix("vmlinuz-")).is_dir()]
    return max(found, key=_release_order, default=None)
