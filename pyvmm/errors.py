"""The exceptions pyvmm raises on purpose.

Every error a user can cause (bad input, a host that cannot run VMs) is a
``PyvmmError``: the CLI prints its message on one line and exits with its
``exit_status``, never a traceback.  Anything else is a bug.
"""

from __future__ import annotations

import os


#: Appended to the errors that come from a missing piece of the host: the command that
#: says what this host has and how to get what it lacks.
SEE_CHECK = " (see pyvmm check)"


class PyvmmError(Exception):
    """Base of the errors that are reported to the user as one line."""

    #: Process exit status the CLI uses for this kind of error.
    exit_status = 2


class ConfigError(PyvmmError):
    """A machine option is invalid (bad size string, --cpus 0, ...)."""


class LoaderError(PyvmmError):
    """A kernel or initrd can't be loaded (missing, corrupt, does not fit)."""


class GuestMemoryError(PyvmmError):
    """A guest-physical access falls outside guest RAM."""


class HostError(PyvmmError):
    """The host can't run the VM: /dev/kvm missing, a capability missing."""

    exit_status = 4


class KvmError(HostError):
    """A KVM ioctl failed."""

    def __init__(self, what: str, errno_value: int) -> None:
        super().__init__(f"{what} failed: {os.strerror(errno_value)} (errno {errno_value})")
        self.errno = errno_value


class DeviceError(PyvmmError):
    """A device can't be set up from its configuration (disk image locked, ...)."""


def describe(exc: BaseException) -> str:
    """``exc``'s message, or its type when it has none (a bare ``assert``): never empty."""
    return str(exc) or type(exc).__name__
