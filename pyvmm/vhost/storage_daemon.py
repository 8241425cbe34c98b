"""qemu-storage-daemon: QEMU's block layer as a process, serving disks over vhost-user-blk.

One daemon per machine serves every drive that needs it (any format but raw,
a throwaway overlay, ``backend=qsd``): pyvmm starts it in a private directory
(``pyvmm.vhost.process``) with nothing but a QMP monitor on a socket pyvmm
has already connected (a socketpair, QEMU's ``fd=``), then adds each drive
over QMP: the image's node (``blockdev-add``, which takes
QEMU's image locks), for ``snapshot=on`` a new qcow2 overlay over it
(``blockdev-create``), and a vhost-user-blk export on a socket next to the
monitor's.  Errors come back per command as QEMU words them ("Failed to get
"write" lock"), so each is one line naming the drive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from typing import Any

from pyvmm.errors import ConfigError, DeviceError, HostError
from pyvmm.vhost.frontend import VhostUserFrontend
from pyvmm.vhost.process import BackendProcess

DAEMON = "qemu-storage-daemon"
#: One line for a host without it (Debian: qemu-system-common, the same package as virtiofsd).
PACKAGE_HINT = (f"{DAEMON} not found: install Debian's qemu-system-common (it serves "
                "qcow2 and the other image formats, and snapshot=on)")
#: How long one QMP command (an image opened, an overlay created) may take.
QMP_TIMEOUT = 30.0
#: Largest QMP message we read (query replies are a few KiB).
QMP_LINE_LIMIT = 1 << 20


def find_storage_daemon() -> str:
    """The qemu-storage-daemon on PATH; ConfigError naming the package if there is none."""
    found = shutil.which(DAEMON)
    if not found:
        raise ConfigError(PACKAGE_HINT)
    return found


class QmpError(DeviceError):
    """A QMP command failed; the message is QEMU's."""


class Qmp:
    """A QMP monitor connection (``sock``, connected, ours to close): one command at a
    time; of the events, only which jobs concluded is kept (``wait_for_job``)."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.name = name
        self.sock = sock
        self.sock.settimeout(QMP_TIMEOUT)
        self._buffer = b""
        #: Jobs a JOB_STATUS_CHANGE event said concluded, not yet waited for.
        self._concluded: set[str] = set()
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                raise DeviceError(f"{self.name} did not answer within {QMP_TIMEOUT:g} s") \
                    from None
            except OSError as exc:
                raise DeviceError(f"{self.name}: {exc.strerror}") from None
            if not chunk:
                raise DeviceError(f"{self.name} closed its monitor")
            self._buffer += chunk
            if len(self._buffer) > QMP_LINE_LIMIT:
                raise DeviceError(f"{self.name}: a monitor message over {QMP_LINE_LIMIT} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise DeviceError(f"{self.name}: a monitor message that is not an object")
        data = message.get("data")
        if message.get("event") == "JOB_STATUS_CHANGE" and isinstance(data, dict) \
                and data.get("status") == "concluded":
            self._concluded.add(str(data.get("id")))
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or QmpError with QEMU's description."""
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise DeviceError(f"{self.name}: {exc.strerror}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(str(reply["error"].get("desc", reply["error"])))
            return reply.get("return")

    def wait_for_job(self, job: str, command: str) -> None:
        """Until the event that says ``job`` concluded (it may have come already, among
        the replies to the commands before), QMP_TIMEOUT at most: no polling of
        ``query-jobs``."""
        deadline = time.monotonic() + QMP_TIMEOUT
        while job not in self._concluded:
            if time.monotonic() > deadline:
                raise DeviceError(f"{self.name}: {command} did not finish within "
                                  f"{QMP_TIMEOUT:g} s")
            self._read()
        self._concluded.discard(job)

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class DaemonDrive:
    """One drive as the daemon opens it (plain values: the schema is not this layer's)."""

    path: str
    format: str
    readonly: bool = False
    direct: bool = False
    #: A new qcow2 overlay over the image takes the writes (None: write the image).
    overlay: str | None = None


class StorageDaemon:
    """The qemu-storage-daemon of one machine, and what it exports."""

    def __init__(self, binary: str) -> None:
        """Start it, its monitor already connected.

        Not a listening socket we connect to once its file appears: QEMU 7.2
        watches a listening monitor socket from its main thread and from the
        monitor's I/O thread at once until that thread has set the monitor up,
        and a client that connects in that window can leave the daemon never
        answering (QEMU's fix: "monitor/qmp: cleanup socket listener sources
        early", November 2025): both threads see the connection, one accepts
        it and the other blocks in ``accept4`` for good.  Seen in the rig
        (``bench/qsd_start.py``): the greeting came, then the main thread, which
        runs QMP's commands, sat in ``accept4`` and ``qmp_capabilities`` got no
        answer.  A socket connected before the daemon starts has no listener
        and no window.
        """
        self.name = DAEMON
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._backend = BackendProcess(DAEMON, "pyvmm-qsd-", lambda _: [
                binary, "--chardev", f"socket,id=qmp,fd={theirs.fileno()}",
                "--monitor", "chardev=qmp"], pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process = self._backend.process
        self._exports = 0
        #: Each export's socket and the name its connections go by, by its index.
        self._sockets: dict[int, tuple[str, str]] = {}
        #: Our connection to each export, by its index.
        self.frontends: dict[int, VhostUserFrontend] = {}
        try:
            self.qmp = Qmp(ours, DAEMON)
        except DeviceError as exc:
            ours.close()
            if self._backend.exited(1.0):  # it said why on its way out
                message = self._backend.death_reason()
                self._backend.stop()
                raise HostError(message) from None
            self._backend.stop()
            raise exc from None
        except BaseException:
            ours.close()
            self._backend.stop()
            raise

    def death_reason(self) -> str:
        return self._backend.death_reason()


    def private_path(self, name: str) -> str:
        """A file in the daemon's private 0700 directory (removed with it)."""
        return self._backend.path(name)

    def export(self, drive: DaemonDrive) -> int:
        """Open ``drive`` in the daemon and export it; the export's index (``connect``).

        DeviceError with QEMU's words if the image can't be opened (missing,
        locked, not that format), the overlay can't be made, or the export fails.
        """
        index = self._exports
        self._exports += 1
        node = f"drive{index}"
        image = image_options(drive, node if drive.overlay is None else f"base{index}")
        self.qmp.execute("blockdev-add", **image)
        if drive.overlay is not None:
            self._add_overlay(index, drive)
        socket_path = self._backend.path(f"vd{index}.sock")
        self.qmp.execute("block-export-add", **export_options(drive, node, f"export{index}",
                                                              socket_path))
        self._sockets[index] = (socket_path, f"{DAEMON} ({drive.path})")
        return index

    def connect(self, index: int) -> VhostUserFrontend:
        """A new connection to the ``index``-th export, replacing ours (closed).

        The export outlives a connection (QEMU's vhost-user server takes the
        next client once the last has gone), and so do the image's node, its
        locks and its overlay: a machine built again after a guest reboot
        connects to the same disk, with the writes the guest made before.
        """
        old = self.frontends.pop(index, None)
        if old is not None:
            old.close()
        path, name = self._sockets[index]
        frontend = VhostUserFrontend.connect(path, name)
        self.frontends[index] = frontend
        return frontend

    def disconnect(self) -> None:
        """Close our connections to the exports; the exports and images stay open."""
        for frontend in self.frontends.values():
            frontend.close()
        self.frontends = {}

    def _add_overlay(self, index: int, drive: DaemonDrive) -> None:
        """A fresh qcow2 at ``drive.overlay`` whose backing file is the image (read-only)."""
        assert drive.overlay is not None
        size = next(node["image"]["virtual-size"] for node in
                    self.qmp.execute("query-named-block-nodes", flat=True)
                    if node.get("node-name") == f"base{index}")
        self.qmp.execute("blockdev-add", driver="file", filename=drive.overlay,
                         **{"node-name": f"overlay-file{index}"},
                         cache={"direct": drive.direct})
        self._run_job(f"create{index}", "blockdev-create", options={
            "driver": "qcow2", "file": f"overlay-file{index}", "size": size,
            "backing-file": os.path.abspath(drive.path), "backing-fmt": drive.format})
        self.qmp.execute("blockdev-add", driver="qcow2", file=f"overlay-file{index}",
                         backing=f"base{index}", discard="unmap",
                         **{"node-name": f"drive{index}"})

    def _run_job(self, job: str, command: str, **arguments: Any) -> None:
        """Start a job and wait for it to conclude; QmpError with its error, if any."""
        self.qmp.execute(command, **{"job-id": job}, **arguments)
        self.qmp.wait_for_job(job, command)
        state: dict[str, Any] = next(
            (j for j in self.qmp.execute("query-jobs") if j.get("id") == job), {})
        self.qmp.execute("job-dismiss", id=job)
        if state.get("error"):
            raise QmpError(str(state["error"]))

    def close(self) -> None:
        """End the daemon: it flushes its images and drops its locks on SIGTERM."""
        self.disconnect()
        qmp = getattr(self, "qmp", None)
        if qmp is not None:
            qmp.close()
        self._backend.stop()


def image_options(drive: DaemonDrive, node: str) -> dict[str, Any]:
    """``blockdev-add``'s arguments for the image itself: readonly=on (and an image under
    an overlay) is read-only, cache=none is ``cache.direct``, discards reach the file."""
    readonly = drive.readonly or drive.overlay is not None
    file_driver = "host_device" if _is_block_device(drive.path) else "file"
    return {"driver": drive.format, "node-name": node, "read-only": readonly,
            "discard": "unmap", "cache": {"direct": drive.direct},
            "file": {"driver": file_driver, "filename": os.path.abspath(drive.path),
                     "read-only": readonly}}


def export_options(drive: DaemonDrive, node: str, export_id: str,
                   socket_path: str) -> dict[str, Any]:
    """``block-export-add``'s arguments: a vhost-user-blk export, writable unless readonly=on."""
    return {"type": "vhost-user-blk", "id": export_id, "node-name": node,
            "addr": {"type": "unix", "path": socket_path}, "writable": not drive.readonly}


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
