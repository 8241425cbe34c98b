"""The ``--net`` NICs of one machine: a passt each, linked to its virtio-net device.

``Networks(config.nets)`` finds passt (a ConfigError, exit 2, before anything
starts, if there is none); ``start`` starts one passt per NIC on a
socketpair; ``device(index, nic)`` is the NIC's virtio-net device over that
socket (``virtio_slots.open_virtio_devices``); ``watch`` puts each socket on
the event loop: readable feeds the device's receive ring, writable drains
what the device transmitted, and a passt that goes away stops the machine
with one line, as a virtiofsd does.  ``close`` ends every passt and closes
the sockets, on every exit path (the machine's closers).
"""

from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Callable, Sequence

from pyvmm.config.network import NetConfig, nics, parse_mac

if TYPE_CHECKING:
    from pyvmm.devices.virtio.net import NetDevice
    from pyvmm.eventloop import EventLoop
    from pyvmm.vhost.passt import PasstProcess
    from pyvmm.vhost.stream import FrameStream

#: Events that say the peer is gone, whatever else is watched.
_GONE = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP


class Networks:
    """The passt processes and links of one machine's NICs (closed with it)."""

    def __init__(self, nets: Sequence[NetConfig]) -> None:
        self.nics = nics(nets)
        self.binary = ""
        self.processes: list[PasstProcess] = []
        self._links: list[tuple[FrameStream, PasstProcess, NetDevice | None]] = []
        if self.nics:
            from pyvmm.vhost.passt import find_passt

            self.binary = find_passt()

    def start(self) -> None:
        """Start a passt per NIC; all or none are left running."""
        from pyvmm.vhost.passt import PasstProcess

        try:
            for index, nic in enumerate(self.nics):
                forwards = [(f.protocol, f.passt_spec()) for f in nic.forwards]
                self.processes.append(PasstProcess(self.binary, forwards,
                                                   f"passt for --net {index}"))
        except BaseException:
            self.close()
            raise

    def device(self, index: int, nic: NetConfig) -> NetDevice:
        """The virtio-net device of the ``index``-th NIC, linked to its passt."""
        from pyvmm.devices.virtio.net import NetDevice, default_mac
        from pyvmm.vhost.passt import PASST_MTU
        from pyvmm.vhost.stream import FrameStream

        process = self.processes[index]
        link = FrameStream(process.sock)
        mac = parse_mac(nic.mac) if nic.mac else default_mac(index)
        device = NetDevice(link, mac, mtu=PASST_MTU)
        self._links.append((link, process, device))
        return device

    def watch(self, loop: EventLoop, on_death: Callable[[str], None]) -> None:
        """Serve each link from the loop; ``on_death(reason)`` when a passt goes away."""
        for link, process, device in self._links:
            assert device is not None
            _watch_link(loop, link, process, device, on_death)

    def close(self) -> None:
        for process in self.processes:
            process.close()
        self.processes = []
        self._links = []


def _watch_link(loop: EventLoop, link: FrameStream, process: PasstProcess, device: NetDevice,
                on_death: Callable[[str], None]) -> None:
    fd = link.fileno()
    dead: list[bool] = []

    def interest(events: int) -> None:
        if not dead:
            loop.modify(fd, events | _GONE)

    def died() -> None:
        dead.append(True)
        loop.remove(fd)
        on_death(process.death_reason())

    def on_events(events: int) -> None:
        # Under the device's lock: a notification on a vCPU thread reads the link too.
        with device.lock:
            serve(events)

    def serve(events: int) -> None:
        if dead:
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
