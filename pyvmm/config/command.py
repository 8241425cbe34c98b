"""How command mode runs its command (``pyvmm run -k K -- CMD``, ``pyvmm.run_command``).

Options beside the machine's, declared the same way (``option_metadata``):
the click options of ``pyvmm run`` are made from them, and both front ends
hand command mode one ``CommandOptions``.  They are not a machine's, so
config files and ``pyvmm config show`` don't have them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pyvmm.config.machine import Option, option_metadata, options_of
from pyvmm.config.values import DirectoryKind, SwitchKind


@dataclass(frozen=True)
class CommandOptions:
    """What command mode needs beyond the machine."""

    rw: bool = field(default=False, metadata=option_metadata(
        "--rw", kind=SwitchKind(),
        help="Command mode: the guest writes through to the host's files (default: "
             "a tmpfs overlay keeps its writes)."))
    modules: str | None = field(default=None, metadata=option_metadata(
        "--modules", kind=DirectoryKind(), metavar="DIR",
        help="Command mode: kernel modules to carry (default /lib/modules/RELEASE of "
             "the kernel, when it exists)."))
    user: str | None = field(default=None, metadata=option_metadata(
        "--user", "-u", metavar="NAME|UID[:GID]",
        help="Command mode: run the command as this user (default: you)."))


@functools.cache
def command_options() -> tuple[Option, ...]:
    """Command mode's options, in ``pyvmm run --help`` order."""
    return options_of(CommandOptions)
