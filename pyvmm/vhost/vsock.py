"""The kernel's vhost-vsock (``/dev/vhost-vsock``): the host side of a guest's virtio-vsock.

The kernel serves the device's receive and transmit rings straight from
guest RAM and connects them to the host's ``AF_VSOCK`` sockets, so no byte
of a connection passes through Python.  We hand it what QEMU's
vhost-vsock does: ``VHOST_SET_OWNER``, the features, the memory table
(guest-physical ranges and where they are mapped in this process), each
ring's size, base and addresses with its kick eventfd (our ioeventfd) and
call eventfd (our irqfd), the guest's CID, then ``VHOST_VSOCK_SET_RUNNING``.
The ioctls and their structs come from <linux/vhost.h> through a cffi module
of their own (``_vsock_build.py``); nothing here knows KVM.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Sequence

from pyvmm.errors import SEE_CHECK, DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import VringConfig

#: The device node, and the module that makes it.
DEVICE = "/dev/vhost-vsock"
#: CIDs 0-2 are reserved (hypervisor, loopback, host); 2**32 - 1 is VMADDR_CID_ANY.
FIRST_GUEST_CID = 3
LAST_GUEST_CID = 0xFFFF_FFFE


class VsockSetupError(DeviceError):
    """/dev/vhost-vsock can't be opened or refuses the guest's CID (exit 2, before the boot)."""

    def __init__(self, message: str, cid_in_use: bool = False) -> None:
        super().__init__(message)
        self.cid_in_use = cid_in_use


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
    raise DeviceError(f"vhost-vsock: ring at {gpa:#x}+{length:#x} is not in guest RAM")


class VhostVsock:
    """An open ``/dev/vhost-vsock`` owned by this process, bound to guest ``cid``.

    Opened (and the CID claimed) when the machine is built, so a missing
    device or a CID another VM holds is one line before the guest starts.
    """

    def __init__(self, cid: int, path: str | None = None) -> None:
        from pyvmm.vhost._vsock_cffi import ffi, lib

        path = path or DEVICE
        self._ffi, self._lib = ffi, lib
        self.cid = cid
        self._running = False
        self._rings: list[int] = []
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            how = "modprobe vhost_vsock" if exc.errno == errno.ENOENT else \
                "it needs read-write access (root, or a udev rule)"
            raise VsockSetupError(f"--vsock {cid}: cannot open {path}: {exc.strerror} "
                                  f"({how}){SEE_CHECK}") from None
        try:
            self._ioctl(lib.VHOST_SET_OWNER, ffi.NULL, "VHOST_SET_OWNER")
            value = ffi.new("uint64_t *")
            self._ioctl(lib.VHOST_GET_FEATURES, value, "VHOST_GET_FEATURES")
            #: What the kernel's device offers (virtio feature bits).
            self.features = int(value[0])
            value[0] = cid
            ret = lib.pyvmm_vhost_ioctl(self.fd, lib.VHOST_VSOCK_SET_GUEST_CID, value)
            if ret == -errno.EADDRINUSE:
                raise VsockSetupError(f"--vsock {cid}: that CID is in use (by another VM, or "
                                      "it is this host's own): choose another",
                                      cid_in_use=True)
            if ret < 0:
                raise VsockSetupError(f"--vsock {cid}: the kernel refuses that CID: "
                                      f"{os.strerror(-ret)}")
        except BaseException:
            os.close(self.fd)
            raise

    def _ioctl(self, request: int, arg: object, what: str) -> None:
        ret = self._lib.pyvmm_vhost_ioctl(self.fd, request, arg)
        if ret < 0:
            raise DeviceError(f"vhost-vsock: {what} failed: {os.strerror(-ret)}")

    def start(self, features: int, memory: GuestMemory, rings: Sequence[VringConfig]) -> None:
        """Give the kernel the negotiated ``features``, guest RAM and ``rings``; run."""
        ffi, lib = self._ffi, self._lib
        self.stop()
        ranges = [HostRange(region.guest_base, region.size,
                            int(ffi.cast("uintptr_t", ffi.from_buffer(region.buffer))))
                  for region in memory.regions]
        value = ffi.new("uint64_t *", features & self.features)
        self._ioctl(lib.VHOST_SET_FEATURES, value, "VHOST_SET_FEATURES")
        table = ffi.new("struct vhost_memory_region[]", len(ranges))
        for entry, item in zip(table, ranges):
            entry.guest_phys_addr = item.guest_base
            entry.memory_size = item.size
            entry.userspace_addr = item.host_address
        ret = lib.pyvmm_vhost_set_mem_table(self.fd, len(ranges), table)
        if ret < 0:
            raise DeviceError(f"vhost-vsock: VHOST_SET_MEM_TABLE failed: {os.strerror(-ret)}")
        for ring in rings:
            state = ffi.new("struct vhost_vring_state *", {"index": ring.index, "num": ring.size})
            self._ioctl(lib.VHOST_SET_VRING_NUM, state, "VHOST_SET_VRING_NUM")
            state.num = 0  # a fresh ring: the driver's first chain is at 0
            self._ioctl(lib.VHOST_SET_VRING_BASE, state, "VHOST_SET_VRING_BASE")
            addr = ffi.new("struct vhost_vring_addr *")
            addr.index = ring.index
            addr.desc_user_addr = host_address(ranges, ring.desc_addr, 16 * ring.size)
            addr.avail_user_addr = host_address(ranges, ring.avail_addr, 6 + 2 * ring.size)
            addr.used_user_addr = host_address(ranges, ring.used_addr, 6 + 8 * ring.size)
            self._ioctl(lib.VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR")
            file = ffi.new("struct vhost_vring_file *", {"index": ring.index, "fd": ring.kick_fd})
            self._ioctl(lib.VHOST_SET_VRING_KICK, file, "VHOST_SET_VRING_KICK")
            file.fd = ring.call_fd
            self._ioctl(lib.VHOST_SET_VRING_CALL, file, "VHOST_SET_VRING_CALL")
            self._rings.append(ring.index)
        running = ffi.new("int *", 1)
        self._ioctl(lib.VHOST_VSOCK_SET_RUNNING, running, "VHOST_VSOCK_SET_RUNNING")
        self._running = True

    def stop(self) -> None:
        """Stop serving the rings (the driver reset the device); the CID stays ours."""
        ffi, lib = self._ffi, self._lib
        if self._running:
            self._running = False
            self._ioctl(lib.VHOST_VSOCK_SET_RUNNING, ffi.new("int *", 0),
                        "VHOST_VSOCK_SET_RUNNING")
        rings, self._rings = self._rings, []
        for index in rings:
            state = ffi.new("struct vhost_vring_state *", {"index": index})
            self._ioctl(lib.VHOST_GET_VRING_BASE, state, "VHOST_GET_VRING_BASE")

    def close(self) -> None:
        """Release the device (the kernel drops the CID and resets its connections)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claim_any_cid(first: int, tries: int = 64) -> VhostVsock:
    """A VhostVsock on the first free CID of ``first`` .. ``first + tries`` (command mode's
    own vsock); VsockSetupError if /dev/vhost-vsock can't be opened, or all are taken."""
    for cid in range(first, first + tries):
        try:
            return VhostVsock(cid)
        except VsockSetupError as exc:
            if not exc.cid_in_use:
                raise
    raise VsockSetupError(f"vhost-vsock: CIDs {first} to {first + tries - 1} are all in use")


def usable() -> bool:
    """Whether this process may open /dev/vhost-vsock (command mode then adds its own)."""
    return os.access(DEVICE, os.R_OK | os.W_OK)
