"""The ``--net`` NICs of one machine: a passt or a tap each, linked to its virtio-net device.

``Networks(config.nets)`` finds passt for the user NICs, and opens each tap
(and ``/dev/vhost-net`` where it serves one): a ConfigError (exit 2) before
the guest starts for a missing passt, a tap that can't be opened, or
``vhost=on`` without a usable vhost-net.  ``start`` starts one passt per user
NIC on a socketpair; ``device(index, nic)`` is the NIC's virtio-net device
(``virtio_slots.open_virtio_devices``): over passt's socket, over the tap
served by pyvmm, or a ``VhostNetDevice`` whose rings the kernel serves (its
kick and call eventfds bound by ``attach_virtio`` as for vhost-user).
``watch`` puts each link pyvmm serves on the event loop: readable feeds the
device's receive ring, writable drains what the device transmitted, and a
passt (or tap) that goes away stops the machine with one line, as a
virtiofsd does.  ``close`` ends every passt and closes the taps and vhost
fds, on every exit path (the machine's closers); a tap pyvmm made goes with it.
"""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from pyvmm.config.network import NetConfig, nics

if TYPE_CHECKING:
    from pyvmm.devices.virtio.device import VirtioDevice
    from pyvmm.devices.virtio.net import NetDevice
    from pyvmm.eventloop import EventLoop
    from pyvmm.vhost.passt import PasstProcess
    from pyvmm.vhost.tap import Tap
    from pyvmm.vhost.vhost_net import VhostNet

#: Events that say the peer is gone, whatever else is watched.
_GONE = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class ServedLink(Protocol):
    """A link pyvmm serves from its loop: ``FrameStream`` (passt) or ``TapLink``."""

    closed: bool
    on_interest: Callable[[int], None] | None

    def fileno(self) -> int: ...
    def fill(self) -> None: ...
    def flush(self) -> None: ...
    def can_send(self) -> bool: ...
    def next_frame(self) -> bytes | None: ...
    def wanted_events(self) -> int: ...


class _TapNic:
    """A tap NIC's host side: the tap, and vhost-net if it serves the rings."""

    def __init__(self, nic: NetConfig, address_of: Callable[[object], int]) -> None:
        from pyvmm.vhost.tap import Tap
        from pyvmm.vhost.vhost_net import VhostNet, open_vhost_net

        self.tap: Tap = Tap(nic.ifname)
        self.vhost: VhostNet | None = None
        try:
            fd = open_vhost_net(nic.vhost, nic.ifname)
            if fd is not None:
                self.vhost = VhostNet(fd, self.tap, address_of)
        except BaseException:
            self.tap.close()
            raise

    def close(self) -> None:
        if self.vhost is not None:
            self.vhost.close()
        self.tap.close()


class Networks:
    """The passt processes, taps and links of one machine's NICs (closed with it)."""

    def __init__(self, nets: Sequence[NetConfig],
                 address_of: Callable[[object], int] | None = None) -> None:
        self.nics = nics(nets)
        self.binary = ""
        self.processes: dict[int, PasstProcess] = {}
        self.taps: dict[int, _TapNic] = {}
        self._links: list[tuple[ServedLink, Callable[[], str], NetDevice, bool]] = []
        if any(nic.type == "user" for nic in self.nics):
            from pyvmm.vhost.passt import find_passt

            self.binary = find_passt()
        try:
            for index, nic in enumerate(self.nics):
                if nic.type == "tap":
                    assert address_of is not None, "a tap NIC's vhost-net needs address_of"
                    self.taps[index] = _TapNic(nic, address_of)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start a passt per user NIC; all or none are left running."""
        from pyvmm.vhost.passt import PasstProcess

        try:
            for index, nic in enumerate(self.nics):
                if nic.type != "user":
                    continue
                forwards = [(f.protocol, f.passt_spec()) for f in nic.forwards]
                self.processes[index] = PasstProcess(self.binary, forwards,
                                                     f"passt for --net {index}")
        except BaseException:
            self.close()
            raise

    def device(self, index: int, nic: NetConfig,
               on_failure: Callable[[str], None] = lambda why: None) -> VirtioDevice:
        """The virtio-net device of the ``index``-th NIC, linked to its back end."""
        from pyvmm.devices.virtio.net import NetDevice

        mac = nic.guest_mac(index)
        if index in self.taps:
            return self._tap_device(self.taps[index], mac, on_failure)
        from pyvmm.vhost.passt import PASST_MTU
        from pyvmm.vhost.stream import FrameStream

        process = self.processes[index]
        link = FrameStream(process.sock)
        device = NetDevice(link, mac, mtu=PASST_MTU)
        self._links.append((link, process.death_reason, device, False))
        return device

    def _tap_device(self, host: _TapNic, mac: bytes,
                    on_failure: Callable[[str], None]) -> VirtioDevice:
        from pyvmm.devices.virtio.net import NetDevice, VhostNetDevice
        from pyvmm.vhost.tap import TapLink

        tap = host.tap
        if host.vhost is not None:
            return VhostNetDevice(host.vhost, host.vhost.offered_features(), mac, tap.mtu(),
                                  on_failure)
        link = TapLink(tap)
        device = NetDevice(link, mac, mtu=tap.mtu(), header_in_frames=True,
                           offloads=tap.offloads, on_offloads=tap.set_offloads)
        self._links.append((link, lambda: f"the tap {tap.name} went away (deleted?)",
                            device, True))
        return device

    def serves_in_kernel(self, index: int) -> bool:
        """Whether the ``index``-th NIC's rings are vhost-net's (for ``--stats`` and tests)."""
        return index in self.taps and self.taps[index].vhost is not None

    def watch(self, loop: EventLoop, on_death: Callable[[str], None]) -> None:
        """Serve each link from the loop; ``on_death(reason)`` when its back end goes away
        (a tap vhost-net serves is watched for that alone: EPOLLERR once it is deleted)."""
        for link, death_reason, device, error_is_gone in self._links:
            _watch_link(loop, link, death_reason, device, on_death, error_is_gone)
        for host in self.taps.values():
            if host.vhost is not None:
                def gone(_events: int, fd: int = host.tap.fd, name: str = host.tap.name) -> None:
                    loop.remove(fd)
                    on_death(f"the tap {name} went away (deleted?)")
                loop.add(host.tap.fd, gone, 0)

    def close(self) -> None:
        for process in self.processes.values():
            process.close()
        for tap in self.taps.values():
            tap.close()
        self.processes = {}
        self.taps = {}
        self._links = []


def _watch_link(loop: EventLoop, link: ServedLink, death_reason: Callable[[], str],
                device: NetDevice, on_death: Callable[[str], None],
                error_is_gone: bool) -> None:
    """``error_is_gone``: EPOLLERR means the back end is gone for good (a deleted tap),
    whatever frames are still read ahead."""
    fd = link.fileno()
    dead: list[bool] = []

    def interest(events: int) -> None:
        if not dead:
            loop.modify(fd, events | _GONE)

    def died() -> None:
        dead.append(True)
        loop.remove(fd)
        on_death(death_reason())

    def on_events(events: int) -> None:
        # Under the device's lock: a notification on a vCPU thread reads the link too.
        with device.lock:
            serve(events)

    def serve(events: int) -> None:
        if dead:
            return
        if error_is_gone and events & select.EPOLLERR:
            link.closed = True
            died()
            return
        if events & select.EPOLLOUT:
            link.flush()
            if link.can_send() and device.link_writable():
                loop.call_at(time.monotonic(), lambda: on_events(0))
        if events & select.EPOLLIN:
            link.fill()
        if link.next_frame() is not None and device.frames_arrived():
            loop.call_at(time.monotonic(), lambda: on_events(0))
        if link.closed and (events & _GONE or link.next_frame() is None):
            died()

    link.on_interest = interest
    loop.add(fd, on_events, link.wanted_events() | _GONE)
