"""The ``--share`` directories of one machine: a virtiofsd and a virtio-fs device each.

``Shares(config.shares)`` checks the directories and finds a virtiofsd (bad
input, before anything starts); ``open`` starts one daemon per share,
negotiates with it and returns the devices; ``watch`` puts each connection
on the event loop, so a daemon that dies stops the machine with one line
instead of leaving the guest waiting on its requests.  The vhost-user and
virtiofsd code is imported only for a machine that has shares: a plain
``pyvmm run`` doesn't pay for it at start-up.
"""

from __future__ import annotations

import logging
import select
from typing import TYPE_CHECKING, Callable, Sequence

from pyvmm.config.machine import ShareConfig
from pyvmm.errors import DeviceError

if TYPE_CHECKING:
    from pyvmm.devices.virtio.fs import FsDevice
    from pyvmm.vhost.virtiofsd import Virtiofsd, VirtiofsdProcess

log = logging.getLogger(__name__)


class Shares:
    """The virtiofsd processes of one machine (closed with it)."""

    def __init__(self, shares: Sequence[ShareConfig]) -> None:
        self.configs: list[tuple[str, ShareConfig]] = []
        self.binary: Virtiofsd | None = None
        self.processes: list[VirtiofsdProcess] = []
        if not shares:
            return
        from pyvmm.devices.virtio.fs import check_tag
        from pyvmm.vhost.virtiofsd import check_shared_dir, find_virtiofsd

        self.configs = [(check_shared_dir(share.path), share) for share in shares]
        for _, share in self.configs:
            check_tag(share.tag)
        self.binary = find_virtiofsd()

    def open(self, on_failure: Callable[[str], None]) -> list[FsDevice]:
        """Start a virtiofsd per share and make its device (in --share order)."""
        if not self.configs:
            return []
        from pyvmm.devices.virtio.fs import FsDevice

        devices = []
        try:
            for directory, share in self.configs:
                process, features = self._start(directory, share.readonly)
                self.processes.append(process)
                devices.append(FsDevice(process.frontend, features, share.tag, on_failure))
        except BaseException:
            for device in devices:
                device.close()
            self.close()
            raise
        return devices

    def _start(self, directory: str, readonly: bool) -> tuple[VirtiofsdProcess, int]:
        """A virtiofsd that answered the handshake, and its features.

        Its namespace sandbox pivots into the directory, which fails where pyvmm
        itself runs in a chroot (the rig) or some containers: then it is tried
        once more with the chroot sandbox.
        """
        from pyvmm.vhost.virtiofsd import VirtiofsdProcess

        assert self.binary is not None
        for sandbox in ("namespace", "chroot"):
            process = VirtiofsdProcess(self.binary, directory, readonly, sandbox)
            try:
                return process, process.frontend.handshake()
            except DeviceError as exc:
                reason = f"{exc}; {process.death_reason()}"
                process.close()
                log.debug("virtiofsd with the %s sandbox failed: %s", sandbox, reason)
        raise DeviceError(reason)

    def watch(self, loop, on_death: Callable[[str], None]) -> None:
        """Call ``on_death(reason)`` when a daemon's connection goes away."""
        for process in self.processes:
            def died(_events: int, process: VirtiofsdProcess = process) -> None:
                loop.remove(process.frontend.fileno())
                on_death(process.death_reason())
            # Only hang-ups: replies are read by whoever sent the request.
            loop.add(process.frontend.fileno(), died, select.EPOLLRDHUP)

    def close(self) -> None:
        for process in self.processes:
            process.close()
        self.processes = []
