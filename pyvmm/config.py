"""The machine's configuration: frozen dataclasses and validation, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyvmm.errors import ConfigError

#: The guest command line used when --append is not given.
DEFAULT_CMDLINE = "console=ttyS0 reboot=k"
#: Smallest guest RAM we accept; a kernel needs more, and says so when loaded.
MIN_MEMORY = 16 << 20
#: CPU feature policies: see pyvmm.arch.x86_64.cpuid.
CPU_POLICIES = ("auto", "host", "compat")

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``512M``, ``2G``, ``1GiB`` or ``768`` (MiB, as QEMU's -m)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{text!r} is not a size (use e.g. 512M or 2G)")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number * _SIZE_UNITS[unit]


@dataclass(frozen=True)
class MachineConfig:
    """Everything ``pyvmm run`` needs to build and run one VM."""

    kernel: str
    initrd: str | None = None
    cmdline: str = DEFAULT_CMDLINE
    memory: int = 512 << 20
    cpus: int = 1
    timeout: float | None = None
    cpu_policy: str = "auto"

    def __post_init__(self) -> None:
        if self.memory < MIN_MEMORY:
            raise ConfigError(
                f"--memory {self.memory >> 20}M is too small; pyvmm needs at least "
                f"{MIN_MEMORY >> 20}M")
        if self.memory % 4096:
            raise ConfigError("--memory must be a multiple of 4 KiB")
        if self.cpus < 1:
            raise ConfigError(f"--cpus {self.cpus}: a machine needs at least one vCPU")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout {self.timeout:g}: must be a positive number of seconds")
        if self.cpu_policy not in CPU_POLICIES:
            raise ConfigError(f"--cpu {self.cpu_policy!r}: choose one of {', '.join(CPU_POLICIES)}")
