"""The ``--share`` directories of one machine: a virtiofsd each, serving its virtio-fs device.

``Shares(config.shares)`` checks the directories and finds a virtiofsd (bad
input, before anything starts); ``start`` starts one daemon per share and
negotiates with it; ``backend(share)`` is the connection and features its
device is made from (``virtio_slots.open_virtio_devices``); ``watch`` puts
each connection on the event loop, so a daemon that dies stops the machine
with one line instead of leaving the guest waiting on its requests.  The
vhost-user and virtiofsd code is imported only for a machine that has
shares: a plain ``pyvmm run`` doesn't pay for it at start-up.
"""

from __future__ import annotations

import logging
import select
from typing import TYPE_CHECKING, Callable, Sequence

from pyvmm.config.tables import ShareConfig
from pyvmm.errors import DeviceError

if TYPE_CHECKING:
    from pyvmm.vhost.frontend import VhostUserFrontend
    from pyvmm.vhost.virtiofsd import Virtiofsd, VirtiofsdProcess

log = logging.getLogger(__name__)


class Shares:
    """The virtiofsd processes of one machine (closed with it)."""

    def __init__(self, shares: Sequence[ShareConfig]) -> None:
        self.configs: list[tuple[str, ShareConfig]] = []
        self.binary: Virtiofsd | None = None
        self.processes: list[VirtiofsdProcess] = []
        self._backends: dict[ShareConfig, tuple[VhostUserFrontend, int]] = {}
        if not shares:
            return
        from pyvmm.vhost.virtiofsd import check_shared_dir, find_virtiofsd

        self.configs = [(check_shared_dir(share.path), share) for share in shares]
        self.binary = find_virtiofsd()

    def start(self) -> None:
        """Start a virtiofsd per share (in --share order); all or none are left running."""
        try:
            for directory, share in self.configs:
                process, features = self._start(directory, share.readonly)
                self.processes.append(process)
                self._backends[share] = (process.frontend, features)
        except BaseException:
            self.close()
            raise

    def backend(self, share: ShareConfig) -> tuple[VhostUserFrontend, int]:
        """The started daemon's connection for ``share``, and the features it offers."""
        return self._backends[share]

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
        self._backends = {}
