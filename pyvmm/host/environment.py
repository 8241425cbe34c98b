"""The environment variables pyvmm reads: each declared, documented and read here only.

None is needed in normal use: they name another binary or device for tests,
comparisons and odd hosts.  Each is read when it is needed (not at import),
so a test's ``monkeypatch.setenv`` takes effect; ``VARIABLES`` is the list
the README's table gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, what it means, and its value when unset or empty."""

    name: str
    help: str
    default: str = ""

    def get(self) -> str:
        return os.environ.get(self.name) or self.default


KVM_DEVICE = Variable("PYVMM_KVM_DEVICE", "the KVM device node to open (tests name a missing "
                      "one)", "/dev/kvm")
UART_FASTPATH = Variable("PYVMM_UART_FASTPATH", "COM1's fast path: on, coalesce (polled THR "
                         "writes coalesced, nothing in C), c (registers in C, no coalescing) "
                         "or off, to compare", "on")
VIRTIOFSD = Variable("PYVMM_VIRTIOFSD", "the virtiofsd to run for --share and command mode "
                     "(default: virtiofsd on PATH, else QEMU's)")
PASST = Variable("PYVMM_PASST", "the passt to run for --net user (default: passt on PATH)")
BUSYBOX = Variable("PYVMM_BUSYBOX", "the static busybox command mode packs into its "
                   "initramfs (default: Debian's busybox-static)")
CACHE_HOME = Variable("XDG_CACHE_HOME", "command mode caches its base initramfs in "
                      "$XDG_CACHE_HOME/pyvmm (default ~/.cache/pyvmm)")
#: Every variable pyvmm reads, in the order the README lists them.
VARIABLES = (KVM_DEVICE, UART_FASTPATH, VIRTIOFSD, PASST, BUSYBOX, CACHE_HOME)


def carried(names: Iterable[str]) -> dict[str, str]:
    """The caller's values of ``names`` that are set: what command mode's job inherits."""
    return {name: os.environ[name] for name in names if name in os.environ}
