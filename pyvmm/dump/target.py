"""Where a dump may go: a new name, or a regular file (or a symlink) it replaces.

A dump is renamed into place, which replaces whatever non-directory sits at
its path: ``--dump /dev/null`` run as root would put a file where the device
was, and a FIFO or a socket would vanish the same way.  So only a regular
file (or a planted symlink, replaced and never followed) may be replaced.
Light on imports: the CLI checks ``--dump`` before the guest starts.
"""

from __future__ import annotations

import os
import stat

from pyvmm.dump import DumpError

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def check_dump_target(path: str) -> None:
    """DumpError unless a dump written to ``path`` replaces only a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DumpError(f"cannot write dump {path!r}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DumpError(f"cannot write dump {path!r}: it is a directory")
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise DumpError(f"cannot write dump {path!r}: it is {kind}; a dump replaces only a "
                    "regular file (leave out --dump for no dump)")
