"""The kernel's vhost-vsock (``/dev/vhost-vsock``): the host side of a guest's virtio-vsock.

The kernel serves the device's receive and transmit rings straight from
guest RAM and connects them to the host's ``AF_VSOCK`` sockets, so no byte
of a connection passes through Python.  We hand it what QEMU's
vhost-vsock does: ``VHOST_SET_OWNER``, the features, the memory table
(guest-physical ranges and where they are mapped in this process), each
ring's size, base and addresses with its kick eventfd (our ioeventfd) and
call eventfd (our irqfd), the guest's CID, then ``VHOST_VSOCK_SET_RUNNING``,
through the kernel's vhost interface (``pyvmm.vhost.kernel``, shared with
vhost-net); nothing here knows KVM.
"""

from __future__ import annotations

import errno
import os
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


class VhostVsock:
    """An open ``/dev/vhost-vsock`` owned by this process, bound to guest ``cid``.

    Opened (and the CID claimed) when the machine is built, so a missing
    device or a CID another VM holds is one line before the guest starts.
    """

    def __init__(self, cid: int, path: str | None = None) -> None:
        from pyvmm.vhost.kernel import KernelVhost  # the binding: only with a vsock

        path = path or DEVICE
        self.cid = cid
        self._running = False
        self._rings: list[int] = []
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            how = "modprobe vhost_vsock" if exc.errno == errno.ENOENT else \
                "it needs read-write access (root, or a udev rule)"
            raise VsockSetupError(f"--vsock {cid}: cannot open {path}: {exc.strerror} "
                                  f"({how}){SEE_CHECK}") from None
        self._vhost = KernelVhost(fd, "vhost-vsock")
        try:
            self._vhost.set_owner()
            #: What the kernel's device offers (virtio feature bits).
            self.features = self._vhost.get_features()
            self._claim(cid)
        except BaseException:
            self._vhost.close()
            raise

    def _claim(self, cid: int) -> None:
        """VHOST_VSOCK_SET_GUEST_CID; VsockSetupError if refused (``cid_in_use``: taken)."""
        from pyvmm.vhost.kernel import VhostRefused

        try:
            self._vhost.set_u64("VHOST_VSOCK_SET_GUEST_CID", cid)
        except VhostRefused as exc:
            if exc.errno == errno.EADDRINUSE:
                raise VsockSetupError(f"--vsock {cid}: that CID is in use (by another VM, or "
                                      "it is this host's own): choose another",
                                      cid_in_use=True) from None
            raise VsockSetupError(f"--vsock {cid}: the kernel refuses that CID: "
                                  f"{os.strerror(exc.errno)}") from None

    @property
    def fd(self) -> int:
        return self._vhost.fd

    def start(self, features: int, memory: GuestMemory, rings: Sequence[VringConfig]) -> None:
        """Give the kernel the negotiated ``features``, guest RAM and ``rings``; run."""
        self.stop()
        self._vhost.set_features(features & self.features)
        ranges = self._vhost.set_mem_table(memory)
        for ring in rings:
            self._vhost.set_vring(ring, ranges)
            self._rings.append(ring.index)
        self._set_running(True)

    def _set_running(self, running: bool) -> None:
        self._running = running
        self._vhost.set_int("VHOST_VSOCK_SET_RUNNING", int(running))

    def stop(self) -> None:
        """Stop serving the rings (the driver reset the device); the CID stays ours."""
        if self._running:
            self._set_running(False)
        rings, self._rings = self._rings, []
        for index in rings:
            self._vhost.get_vring_base(index)

    def close(self) -> None:
        """Release the device (the kernel drops the CID and resets its connections)."""
        self._vhost.close()


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
