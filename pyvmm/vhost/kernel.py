"""The host kernel's vhost interface (``<linux/vhost.h>``), common to every ``/dev/vhost-*``.

``KernelVhost`` is one open vhost device and its ioctls: ownership, features,
the memory table, and each ring's size, base, addresses, kick and call
eventfds; the device's own ioctls (vhost-net's backend, vhost-vsock's CID
and running state) go through ``ioctl``.  Unlike vhost-user, the kernel reads
guest RAM through pyvmm's own mappings: the memory table maps guest-physical
ranges to this process's addresses, and ring addresses are given as this
process's addresses too, so any guest RAM works (no memfd).  The numbers and
structs come from the header through a cffi module of their own
(``_build.py``); nothing here knows KVM.  ``vhost_net.py`` and ``vsock.py``
are its two users.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost._vhost_cffi import ffi, lib
from pyvmm.vhost.frontend import VringConfig

# The two calls into C, module globals so that tests can stand in for the kernel.
#: ioctl(2) with a pointer argument: 0 or -errno.
_ioctl: Callable[[int, int, Any], int] = lib.pyvmm_vhost_ioctl
#: VHOST_SET_MEM_TABLE of n ``struct vhost_memory_region``: 0 or -errno.
_set_mem_table: Callable[[int, int, Any], int] = lib.pyvmm_vhost_set_mem_table


@dataclass(frozen=True)
class HostRange:
    """One range of guest RAM and where it is mapped in this process."""

    guest_base: int
    size: int
    host_address: int


def host_address(ranges: Sequence[HostRange], gpa: int, length: int) -> int:
    """This process's address of guest-physical ``gpa`` .. ``gpa + length``; DeviceError if
    that is not all in one range (the kernel would refuse it anyway)."""
    for item in ranges:
        if item.guest_base <= gpa and gpa + length <= item.guest_base + item.size:
            return item.host_address + gpa - item.guest_base
    raise DeviceError(f"a ring at {gpa:#x}+{length:#x} is not in guest RAM")


def buffer_address(buffer: object) -> int:
    """Where a writable buffer (a region of guest RAM) is in this process."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(buffer)))


class VhostRefused(DeviceError):
    """The kernel refused a vhost ioctl (``errno`` says why)."""

    def __init__(self, message: str, error: int) -> None:
        super().__init__(message)
        self.errno = error


class KernelVhost:
    """One open ``/dev/vhost-*`` device (``fd``, owned: ``close``); each ioctl a
    ``VhostRefused`` naming ``name`` if refused."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def ioctl(self, what: str, argument: Any = ffi.NULL) -> None:
        """The ioctl ``VHOST_...`` named ``what`` (a constant of the binding)."""
        ret = _ioctl(self.fd, getattr(lib, what), argument)
        if ret < 0:
            raise VhostRefused(f"{self.name}: {what} refused: {os.strerror(-ret)}", -ret)

    def set_owner(self) -> None:
        self.ioctl("VHOST_SET_OWNER")

    def get_features(self) -> int:
        value = ffi.new("uint64_t *")
        self.ioctl("VHOST_GET_FEATURES", value)
        return int(value[0])

    def set_features(self, features: int) -> None:
        self.set_u64("VHOST_SET_FEATURES", features)

    def set_u64(self, what: str, value: int) -> None:
        """An ioctl taking a 64-bit value (features, vhost-vsock's CID)."""
        self.ioctl(what, ffi.new("uint64_t *", value))

    def set_int(self, what: str, value: int) -> None:
        """An ioctl taking an int (vhost-vsock's running state)."""
        self.ioctl(what, ffi.new("int *", value))

    def set_mem_table(self, memory: GuestMemory,
                      address_of: Callable[[object], int] = buffer_address) -> list[HostRange]:
        """Guest RAM's ranges and where they are mapped here (``address_of`` a region's
        buffer); returns them for ``set_vring``."""
        ranges = [HostRange(region.guest_base, region.size, address_of(region.buffer))
                  for region in memory.regions]
        table = ffi.new("struct vhost_memory_region[]", len(ranges))
        for entry, item in zip(table, ranges):
            entry.guest_phys_addr = item.guest_base
            entry.memory_size = item.size
            entry.userspace_addr = item.host_address
        ret = _set_mem_table(self.fd, len(ranges), table)
        if ret < 0:
            raise VhostRefused(f"{self.name}: VHOST_SET_MEM_TABLE refused: "
                               f"{os.strerror(-ret)}", -ret)
        return ranges

    def set_vring(self, ring: VringConfig, ranges: Sequence[HostRange]) -> None:
        """Size, base 0 (a fresh ring), this process's addresses of its three parts, kick
        and call eventfds: in QEMU's order."""
        state = ffi.new("struct vhost_vring_state *", {"index": ring.index, "num": ring.size})
        self.ioctl("VHOST_SET_VRING_NUM", state)
        state.num = 0
        self.ioctl("VHOST_SET_VRING_BASE", state)
        try:
            addr = ffi.new("struct vhost_vring_addr *", {
                "index": ring.index,
                "desc_user_addr": host_address(ranges, ring.desc_addr, 16 * ring.size),
                "avail_user_addr": host_address(ranges, ring.avail_addr, 6 + 2 * ring.size),
                "used_user_addr": host_address(ranges, ring.used_addr, 6 + 8 * ring.size)})
        except DeviceError as exc:
            raise DeviceError(f"{self.name}: {exc}") from None
        self.ioctl("VHOST_SET_VRING_ADDR", addr)
        self.set_vring_file("VHOST_SET_VRING_KICK", ring.index, ring.kick_fd)
        self.set_vring_file("VHOST_SET_VRING_CALL", ring.index, ring.call_fd)

    def set_vring_file(self, what: str, index: int, fd: int) -> None:
        """An ioctl taking a ring's index and an fd (-1: none): kick, call, vhost-net's
        backend."""
        self.ioctl(what, ffi.new("struct vhost_vring_file *", {"index": index, "fd": fd}))

    def get_vring_base(self, index: int) -> int:
        """Stop the ring; where the kernel got to."""
        state = ffi.new("struct vhost_vring_state *", {"index": index})
        self.ioctl("VHOST_GET_VRING_BASE", state)
        return int(state.num)

    def close(self) -> None:
        """The kernel stops the rings and its worker when the fd closes."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
