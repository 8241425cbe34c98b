"""The ``--drive`` disks of one machine: which pyvmm serves, which qemu-storage-daemon does.

``Disks(config.drives)`` decides, before anything starts: the image's format
(``format=``, else its magic: ``pyvmm.host.image_format``), and who serves
it: pyvmm's own virtio-block (raw images, the default) or the machine's one
qemu-storage-daemon over vhost-user-blk (any other format, ``snapshot=on``,
``backend=qsd``).  ``start`` starts the daemon and exports each of its
drives; ``backend(index)`` is the connection, features and config space the
``index``-th drive's device is made from; ``watch`` stops the machine with one
line if the daemon dies; ``close`` ends the daemon, which deletes throwaway
overlays with its private directory.  The daemon code is imported only for a
machine that needs it.
"""

from __future__ import annotations

import errno
import os
import select
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from pyvmm.config.tables import DriveConfig
from pyvmm.errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from pyvmm.host.disk_image import DiskImage
    from pyvmm.vhost.frontend import VhostUserFrontend
    from pyvmm.vhost.storage_daemon import StorageDaemon


@dataclass(frozen=True)
class DrivePlan:
    """One drive, with its format and who serves it."""

    drive: DriveConfig
    format: str
    daemon: bool


def plan_drive(drive: DriveConfig) -> DrivePlan:
    """The drive's format (its magic unless given) and back end; ConfigError/DeviceError
    in one line for what can't be done."""
    what = f"--drive {drive.path}"
    fmt = drive.format
    if fmt == "auto":
        from pyvmm.host.image_format import detect_format

        try:
            fmt = detect_format(drive.path)
        except FileNotFoundError:
            raise DeviceError(f"disk image {drive.path!r} not found") from None
        except OSError as exc:
            raise DeviceError(f"cannot read disk image {drive.path!r}: {exc.strerror}") \
                from None
    snapshot = (drive.snapshot or bool(drive.overlay)) and not drive.readonly
    daemon = drive.backend == "qsd" or fmt != "raw" or snapshot
    if daemon and drive.backend == "pyvmm":
        why = "snapshot=on" if fmt == "raw" else f"a {fmt} image"
        raise ConfigError(f"{what}: backend=pyvmm serves raw images only, not {why} "
                          "(qemu-storage-daemon does: backend=auto)")
    if daemon and drive.serial:
        raise ConfigError(f"{what}: serial= is for disks pyvmm serves; qemu-storage-daemon's "
                          "vhost-user-blk export answers GET_ID itself")
    if drive.overlay and os.path.lexists(drive.overlay):
        raise ConfigError(f"{what}: overlay={drive.overlay} exists (to go on from an "
                          "overlay, give it as path=)")
    return DrivePlan(drive, fmt, daemon)


class Disks:
    """The drives of one machine and, if any needs it, its qemu-storage-daemon."""

    def __init__(self, drives: Sequence[DriveConfig], overlays: bool = False) -> None:
        self.plans = [plan_drive(drive) for drive in drives]
        #: A restore with ``snapshot=True``: each writable raw disk under a throwaway
        #: in-process copy-on-write overlay (``pyvmm.host.cow_image``).
        self.overlays = overlays
        self.daemon: StorageDaemon | None = None
        self._binary: str | None = None
        self._backends: dict[int, tuple[VhostUserFrontend, int, bytes]] = {}
        #: The daemon's export of each drive it serves, by the drive's index.
        self._exports: dict[int, int] = {}
        self._kept_overlays: list[str] = []
        if self.need_daemon:
            from pyvmm.vhost.storage_daemon import find_storage_daemon

            self._binary = find_storage_daemon()

    @property
    def need_daemon(self) -> bool:
        """Whether some drive is served by qemu-storage-daemon (guest RAM must be a memfd)."""
        return any(plan.daemon for plan in self.plans)

    def served_by_daemon(self, index: int) -> bool:
        return self.plans[index].daemon

    def open_image(self, index: int) -> DiskImage:
        """The raw image of the ``index``-th drive, opened and locked for pyvmm to serve."""
        from pyvmm.host.disk_image import DiskImage

        drive = self.plans[index].drive
        if self.overlays and not drive.readonly:
            from pyvmm.host.cow_image import CowImage

            return CowImage(drive.path, direct=drive.cache == "none")
        return DiskImage(drive.path, readonly=drive.readonly, direct=drive.cache == "none")

    def start(self) -> None:
        """Start the daemon and export its drives (in --drive order); all or nothing.

        Called again for the machine built after a guest reboot (``--on-reboot
        restart``), it connects to the same exports: the daemon, its images,
        their locks and overlays stay until ``close``, so the guest finds its
        writes after the reboot, as under QEMU's ``-snapshot``.
        """
        if not self.need_daemon:
            return
        from pyvmm.devices.virtio.vhost_user import BLOCK_CONFIG_BYTES
        from pyvmm.vhost.storage_daemon import DaemonDrive, StorageDaemon

        assert self._binary is not None
        again = self.daemon is not None
        try:
            if self.daemon is None:
                self.daemon = StorageDaemon(self._binary)
            for index, plan in enumerate(self.plans):
                if not plan.daemon:
                    continue
                drive = plan.drive
                try:
                    if not again:
                        self._exports[index] = self.daemon.export(DaemonDrive(
                            drive.path, plan.format, drive.readonly, drive.cache == "none",
                            self._overlay_file(index, drive)))
                    frontend = self.daemon.connect(self._exports[index])
                    config = frontend.get_config(BLOCK_CONFIG_BYTES)
                    features = without_zero_size_max(frontend.handshake(), config)
                except DeviceError as exc:
                    raise DeviceError(f"--drive {drive.path}: {exc}") from None
                self._backends[index] = (frontend, features, config)
        except BaseException:
            self.close()
            for path in self._kept_overlays:  # the guest never ran: nothing to keep
                _remove(path)
            raise
        self._kept_overlays = []

    def _overlay_file(self, index: int, drive: DriveConfig) -> str | None:
        """The overlay's file, made here (O_EXCL, 0600): in the daemon's private
        directory (gone with it), or ``overlay=FILE`` (kept)."""
        if not ((drive.snapshot or drive.overlay) and not drive.readonly):
            return None
        assert self.daemon is not None
        path = drive.overlay or self.daemon.private_path(f"overlay{index}.qcow2")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DeviceError(f"--drive {drive.path}: cannot create the overlay {path}: "
                              f"{exc.strerror}") from None
        os.close(fd)
        if drive.overlay:
            self._kept_overlays.append(path)
        return path

    def backend(self, index: int) -> tuple[VhostUserFrontend, int, bytes]:
        """The ``index``-th drive's export: connection, virtio features, config space."""
        return self._backends[index]

    def watch(self, loop, on_death: Callable[[str], None]) -> None:
        """Call ``on_death(reason)`` once when the daemon goes away (an export hangs up)."""
        daemon = self.daemon
        if daemon is None:
            return
        told: list[bool] = []
        for frontend, _features, _config in self._backends.values():
            def died(_events: int, frontend: VhostUserFrontend = frontend) -> None:
                loop.remove(frontend.fileno())
                if not told:
                    told.append(True)
                    on_death(daemon.death_reason())
            loop.add(frontend.fileno(), died, select.EPOLLRDHUP)

    def disconnect(self) -> None:
        """The machine is gone, the run goes on: drop our connections, keep the daemon."""
        if self.daemon is not None:
            self.daemon.disconnect()
        self._backends = {}

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None
        self._backends = {}


#: virtio-blk's SIZE_MAX feature: config's size_max (le32 at byte 8) bounds each data buffer.
VIRTIO_BLK_F_SIZE_MAX = 1


def without_zero_size_max(features: int, config: bytes) -> int:
    """The daemon's features, less SIZE_MAX if its size_max is 0.

    QEMU 7.2's vhost-user-blk export offers SIZE_MAX with size_max 0 (it means
    no limit); Linux takes the 0 at its word and raises it to its minimum, a
    page: every request is then 4 KiB buffers, at most seg_max (126) of them,
    so a 1 MiB read is three requests of 126 buffers each.  Without the
    feature the guest's buffers are as large as its memory makes them, as
    under QEMU's own virtio-blk (which doesn't offer SIZE_MAX); the daemon
    takes any buffer size.
    """
    if int.from_bytes(config[8:12], "little") == 0:
        return features & ~(1 << VIRTIO_BLK_F_SIZE_MAX)
    return features


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
