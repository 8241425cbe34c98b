"""The ``--share`` directories of one machine: a virtiofsd and a virtio-fs device each.

``Shares(config.shares)`` checks the directories and finds a virtiofsd (bad
input, before anything starts); ``open`` starts one daemon per share,
negotiates with it and returns the devices; ``watch`` puts each connection
on the event loop, so a daemon that dies stops the machine with one line
instead of leaving the guest waiting on its requests.
"""

from __future__ import annotations

import select
from typing import Callable, Sequence

from pyvmm.config import ShareConfig
from pyvmm.devices.virtio.fs import FsDevice, check_tag
from pyvmm.virtiofsd import VirtiofsdProcess, check_shared_dir, find_virtiofsd


class Shares:
    """The virtiofsd processes of one machine (closed with it)."""

    def __init__(self, shares: Sequence[ShareConfig]) -> None:
        self.configs = [(check_shared_dir(share.path), share) for share in shares]
        for _, share in self.configs:
            check_tag(share.tag)
        self.binary = find_virtiofsd() if shares else None
        self.processes: list[VirtiofsdProcess] = []

    def open(self, on_failure: Callable[[str], None]) -> list[FsDevice]:
        """Start a virtiofsd per share and make its device (in --share order)."""
        devices = []
        try:
            for directory, share in self.configs:
                assert self.binary is not None
                process = VirtiofsdProcess(self.binary, directory, share.readonly)
                self.processes.append(process)
                features = process.frontend.handshake()
                devices.append(FsDevice(process.frontend, features, share.tag, on_failure))
        except BaseException:
            for device in devices:
                device.close()
            self.close()
            raise
        return devices

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
