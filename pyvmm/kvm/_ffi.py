"""Loads the compiled cffi module and wraps its ioctl calls with error checks."""

from __future__ import annotations

from pyvmm.errors import HostError, KvmError

try:
    from pyvmm.kvm._kvm_cffi import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise HostError(
        "the KVM binding is not built (pyvmm/kvm/_kvm_cffi); "
        "reinstall with 'pip install -e .' on a machine with gcc and <linux/kvm.h>"
    ) from exc

__all__ = ["ffi", "lib", "ioctl", "ioctl_value", "address_of"]


def ioctl(fd: int, request: int, arg: object, what: str) -> int:
    """Issue an ioctl with a pointer argument; raise KvmError naming ``what``."""
    ret = lib.pyvmm_ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(what, -ret)
    return ret


def ioctl_value(fd: int, request: int, arg: int, what: str) -> int:
    """Issue an ioctl with an integer argument; raise KvmError naming ``what``."""
    ret = lib.pyvmm_ioctl_value(fd, request, arg)
    if ret < 0:
        raise KvmError(what, -ret)
    return ret


def address_of(buffer: object) -> int:
    """Host virtual address of a writable buffer (an mmap or bytearray)."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(buffer)))
