"""Guest memory dumps: ELF cores as QEMU's dump-guest-memory writes them, and reading them."""

from pyvmm.errors import PyvmmError


class DumpError(PyvmmError):
    """A dump can't be written or read (not a core, truncated, address not in it)."""
