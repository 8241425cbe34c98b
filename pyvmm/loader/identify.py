"""Whether a kernel image is Linux, told apart by content as the loaders tell formats apart.

A Linux bzImage names its release in the setup header (``kernel_version``);
an ELF ``vmlinux`` carries ``linux_banner`` ("Linux version ...") uncompressed.
pyvmm's tiny test guests have neither.  It matters on a ``kvm_pvm`` host,
where Linux can't reach user space but a tiny guest runs.
"""

from __future__ import annotations

from pyvmm.loader.bzimage import kernel_release
from pyvmm.loader.elf import is_elf

#: The start of ``linux_banner`` (init/version.c), in every vmlinux.
LINUX_BANNER = b"Linux version "


def is_linux(image: bytes) -> bool:
    """True for a Linux bzImage or vmlinux; False for anything else pyvmm can boot."""
    if kernel_release(image) is not None:
        return True
    return is_elf(image) and LINUX_BANNER in image
