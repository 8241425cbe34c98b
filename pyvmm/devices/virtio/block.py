"""virtio-block (virtio 1.2 section 5.2): a raw image file as /dev/vdX.

A raw image (``DiskImage``: its bytes are the file's) is served in C
(``pyvmm/host/_disk_build.py``): ``_RequestLoop`` hands the ring and guest RAM
to it, and it parses and runs every available request per call, reading and
writing straight between the image's fd and guest RAM.  In the machine the
disk is served like a vhost back end: its ``kick_fds`` become KVM's
ioeventfds, ``call_fd`` its irqfd, and a thread of its own runs the C loop
(GIL released), so a request costs no Python at all; without them (tests,
the fuzzer) each notification runs one pass of the C loop.

The Python executor below (``parse_request``, ``BlockDevice._execute``) is
kept for one disk only: a restored clone's copy-on-write overlay
(``pyvmm.host.cow_image.CowImage``), whose map of written sectors is Python's.
Both keep the limits declared here.  Every failure the guest can cause
(sectors past the end, a write to a read-only disk, an odd length, a host I/O
error) becomes a status byte, never an exception out of the device.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from pyvmm.devices.virtio.device import SERVE_BUDGET_SECONDS, VirtioDevice
from pyvmm.host.disk_image import BOUNCE_SIZE, SECTOR_SIZE, DiskImage
from pyvmm.devices.virtio.queue import (DescriptorChain, QueueError, SplitQueue, bind_c_interrupt,
                                        bind_c_regions, bind_c_ring, read_from, write_into)
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

VIRTIO_ID_BLOCK = 2

# Feature bits (section 5.2.3).
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

# Request types and status values (section 5.2.6).
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20
WRITE_ZEROES_FLAG_UNMAP = 1
QUEUE_SIZE = 256
#: Request type we give a chain whose header is too short to read.
MALFORMED = -1
# The limits we advertise in config space, and enforce: they bound the host
# memory and time one request can take, whatever the guest puts in a chain.
#: Largest data buffer (descriptor) of a request (size_max).
SIZE_MAX = 128 << 10
#: Most data buffers in a request (seg_max): the header and status take two.
#: So a request moves at most SEG_MAX * SIZE_MAX (31.75 MiB): tens of
#: milliseconds, however the guest builds it.  (Linux sends 1.25 MiB at most
#: unless told otherwise, max_sectors_kb.)
SEG_MAX = QUEUE_SIZE - 2
#: Largest discard range in one segment (2 GiB: punching a hole is cheap).
MAX_DISCARD_SECTORS = 1 << 22
#: Largest write-zeroes range (32 MiB): where the filesystem can't zero a
#: range, the zeros are written, so this bounds the time a request takes.
MAX_WRITE_ZEROES_SECTORS = 1 << 16
#: Segments in one discard / write-zeroes request; so its payload is 16 bytes.
MAX_DISCARD_SEGMENTS = 1

#: What a pass of the C loop reports (its PYVMM_BLK_* bits).
_LOOP_INTERRUPT, _LOOP_MORE, _LOOP_ERROR = 1, 2, 4

_HEADER = struct.Struct("<IIQ")      # type, reserved, sector
_SEGMENT = struct.Struct("<QII")     # sector, num_sectors, flags
# struct virtio_blk_config up to write_zeroes_may_unmap (section 5.2.4).
_CONFIG = struct.Struct("<QII4xI8xBxHIIIIIB3x")


@dataclass
class BlockRequest:
    """A parsed request: what to do, where, with which guest buffers."""

    type: int
    sector: int
    data: list[memoryview] = field(default_factory=list)  # in: writable; out: readable
    status: memoryview | None = None

    @property
    def data_length(self) -> int:
        return sum(len(view) for view in self.data)


def parse_request(chain: DescriptorChain) -> BlockRequest | None:
    """Split a chain into header, data and status; None if there is no status byte."""
    if not chain.writable or len(chain.writable[-1]) == 0:
        return None
    last = chain.writable[-1]
    status = last[len(last) - 1:]
    writable = chain.writable[:-1]
    if len(last) > 1:
        writable = writable + [last[:len(last) - 1]]
    header = read_from(chain.readable, _HEADER.size)
    if len(header) < _HEADER.size:
        return BlockRequest(MALFORMED, 0, [], status)
    type_, _reserved, sector = _HEADER.unpack(header)
    readable_data = _skip(chain.readable, _HEADER.size)
    if type_ in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID):
        # The device writes the data: a read-only data buffer is the driver's error.
        if any(len(v) for v in readable_data):
            return BlockRequest(MALFORMED, 0, [], status)
        return BlockRequest(type_, sector, writable, status)
    if any(len(v) for v in writable):
        return BlockRequest(MALFORMED, 0, [], status)  # writable data on a write/flush
    return BlockRequest(type_, sector, readable_data, status)


def within_limits(request: BlockRequest) -> bool:
    """Whether the data keeps to what seg_max and size_max allow a request in all.

    The bound is on the total: a driver that puts more than size_max in one
    buffer (as our tiny benchmark guest does) is served while the request as
    a whole stays within seg_max * size_max.
    """
    return len(request.data) <= SEG_MAX and request.data_length <= SEG_MAX * SIZE_MAX


def _skip(views: list[memoryview], count: int) -> list[memoryview]:
    """``views`` without their first ``count`` bytes."""
    result = []
    for view in views:
        if count >= len(view):
            count -= len(view)
            continue
        result.append(view[count:])
        count = 0
    return result


class BlockDevice(VirtioDevice):
    """One disk: a single request queue, served in C (a raw image) or in Python."""

    device_id = VIRTIO_ID_BLOCK

    def __init__(self, disk: DiskImage, serial: str = "") -> None:
        super().__init__((QUEUE_SIZE,))
        self.disk = disk
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        #: The C request loop, for an image whose bytes are its file's.
        self._loop = _RequestLoop(disk, self.serial) if disk.plain_file else None
        #: Bound by the machine (attach_virtio) once it asked for ``kick_fds``: the
        #: irqfd the serving thread signals.
        self.call_fd: int | None = None
        #: Given by the machine with ``call_fd`` where it can: a C function and its
        #: context, by address (``int pulse(void *context)``, 0 when the guest was
        #: interrupted), which the serving thread calls instead of signalling
        #: ``call_fd`` (still signalled when the pulse fails).  Opaque here.
        self.interrupt_pulse: tuple[int, int] | None = None
        self._kick_fds: list[int] | None = None
        self._thread: threading.Thread | None = None
        #: The thread was stopped by ``pause_serving``, to start again on ``resume_serving``.
        self._paused = False

    @property
    def kick_fds(self) -> list[int]:
        """For a disk served in C only (else AttributeError, so ``getattr(device,
        "kick_fds", None)`` is None): one eventfd, made when the machine asks
        (attach_virtio binds it as KVM's ioeventfd and owns it).

        Asking makes the disk back-end served, as a ``VhostDevice`` is: its thread
        raises every used-buffer interrupt through ``call_fd``, never the transport,
        so the machine answers its InterruptStatus reads and absorbs its ACKs
        without Python (``pyvmm.vcpu.interrupt_status``)."""
        if self._loop is None:
            raise AttributeError("kick_fds: a copy-on-write overlay is served from the loop")
        if self._kick_fds is None:
            self._kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)]
            self.backend_interrupts = True
        return self._kick_fds

    def device_features(self) -> int:
        features = super().device_features() | 1 << VIRTIO_BLK_F_FLUSH \
            | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_SIZE_MAX \
            | 1 << VIRTIO_BLK_F_BLK_SIZE
        if self.disk.readonly:
            features |= 1 << VIRTIO_BLK_F_RO
        else:
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES
        return features

    def config_space(self) -> bytes:
        return _CONFIG.pack(
            self.disk.sectors,
            SIZE_MAX,
            SEG_MAX,
            SECTOR_SIZE,                # blk_size
            0,                          # writeback (no CONFIG_WCE)
            1,                          # num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, 8,  # 8: 4 KiB alignment
            MAX_WRITE_ZEROES_SECTORS, MAX_DISCARD_SEGMENTS,
            1)                          # write_zeroes_may_unmap

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        super().activate(memory, driver_features, raise_used, broken)
        if self._loop is not None:
            self._loop.load(memory, self.queues[0])
            if self.call_fd is not None and self._kick_fds is not None:
                self._start_thread()

    def reset(self) -> None:
        self._stop_thread()
        self._paused = False
        super().reset()
        if self._loop is not None:
            self._loop.unload()

    def process_queue(self, index: int) -> None:
        if index != 0:
            return
        if self._loop is None:
            self.serve(self.queues[0], self._handle)
        elif self._thread is not None and self._kick_fds is not None:
            os.eventfd_write(self._kick_fds[0], 1)  # a notify KVM did not take
        elif self.memory is not None:
            status, error = self._loop.run()
            self._loop.log_errors(self.disk.path)
            if status & _LOOP_INTERRUPT:
                self._raise_used()
            if error is not None:
                raise QueueError(error)

    def pending(self, index: int) -> bool:
        return self._thread is None and super().pending(index)

    def pause_serving(self) -> None:
        """The machine pauses (for a snapshot): the thread stops after its pass, so the
        rings rest and the queue's positions are Python's until ``resume_serving``."""
        with self.lock:
            if self._thread is not None:
                self._stop_thread()
                self._paused = True

    def resume_serving(self) -> None:
        with self.lock:
            if self._paused:
                self._paused = False
                if self.active:
                    self._start_thread()

    def to_state(self) -> dict:
        """Nothing of its own.  Unpaused, with the thread serving, the queue's positions
        are C's: stop it (its pass ends) and start it again, so the transport saves them."""
        if self._thread is not None:
            self._stop_thread()
            self._start_thread()
        return {}

    def shutdown(self) -> None:
        """Stop the thread (its pass ends: no request is left half done), then flush."""
        self._stop_thread()
        if self._loop is not None:
            self._loop.log_errors(self.disk.path)
        self.disk.close()

    # -- the serving thread (the machine's disk) ------------------------------------------

    def _start_thread(self) -> None:
        assert self._loop is not None and self._kick_fds is not None
        assert self.call_fd is not None
        self._loop.start_serving(self._kick_fds[0], self.call_fd, self.interrupt_pulse)
        self._thread = threading.Thread(target=self._serve, name="virtio-blk", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._loop is not None
        error = self._loop.serve()
        if error is None:
            return
        # Report under the lock, unless a reset or a stop (which hold it) is stopping us.
        while not self._loop.stopping:
            if self.lock.acquire(timeout=0.05):
                try:
                    if not self._loop.stopping:
                        self._broken(error)
                finally:
                    self.lock.release()
                return

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            assert self._loop is not None
            self._loop.stop_serving(thread)

    # -- requests ---------------------------------------------------------------

    def _handle(self, chain: DescriptorChain) -> int:
        request = parse_request(chain)
        if request is None:
            log.debug("virtio-blk: chain %d has no status byte; dropped", chain.head)
            return 0
        status, written = self._execute(request)
        assert request.status is not None
        request.status[0] = status
        return written + 1

    def _execute(self, request: BlockRequest) -> tuple[int, int]:
        """Run one request; return (status, bytes written into the guest's buffers)."""
        kind = request.type
        if kind == MALFORMED or not within_limits(request):
            return VIRTIO_BLK_S_IOERR, 0
        try:
            if kind == VIRTIO_BLK_T_IN:
                return self._read(request)
            if kind == VIRTIO_BLK_T_OUT:
                return self._write(request), 0
            if kind == VIRTIO_BLK_T_FLUSH:
                self.disk.flush()
                return VIRTIO_BLK_S_OK, 0
            if kind == VIRTIO_BLK_T_GET_ID:
                ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
                return VIRTIO_BLK_S_OK, write_into(request.data, ident)
            if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                return self._discard_or_zero(request), 0
        except OSError as exc:
            log.warning("virtio-blk: %s: I/O error: %s", self.disk.path, exc.strerror)
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_bounds(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and \
            sector * SECTOR_SIZE + length <= self.disk.size

    def _read(self, request: BlockRequest) -> tuple[int, int]:
        length = request.data_length
        if not self._in_bounds(request.sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        done = self.disk.read_into(request.data, request.sector * SECTOR_SIZE) \
            if length else 0
        return (VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR), done

    def _write(self, request: BlockRequest) -> int:
        length = request.data_length
        if self.disk.readonly or not self._in_bounds(request.sector, length):
            return VIRTIO_BLK_S_IOERR
        done = self.disk.write_from(request.data, request.sector * SECTOR_SIZE) \
            if length else 0
        return VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR

    def _discard_or_zero(self, request: BlockRequest) -> int:
        if self.disk.readonly:
            return VIRTIO_BLK_S_IOERR
        length = request.data_length
        if not length or length % _SEGMENT.size or \
                length > MAX_DISCARD_SEGMENTS * _SEGMENT.size:
            return VIRTIO_BLK_S_IOERR  # checked before reading: the payload stays small
        payload = read_from(request.data, length)
        largest = MAX_DISCARD_SECTORS if request.type == VIRTIO_BLK_T_DISCARD \
            else MAX_WRITE_ZEROES_SECTORS
        for sector, count, flags in _SEGMENT.iter_unpack(payload):
            if count > largest or not self._in_bounds(sector, count * SECTOR_SIZE):
                return VIRTIO_BLK_S_IOERR
            offset, length = sector * SECTOR_SIZE, count * SECTOR_SIZE
            if request.type == VIRTIO_BLK_T_DISCARD:
                self.disk.discard(offset, length)
            else:
                self.disk.write_zeroes(offset, length,
                                       unmap=bool(flags & WRITE_ZEROES_FLAG_UNMAP))
        return VIRTIO_BLK_S_OK


class _RequestLoop:
    """The C request loop of a raw disk: its ring, guest RAM and the image's fd as one
    C struct (``pyvmm_blk``), and the passes or the serving loop over it.

    Guest RAM goes over as each region's host address and size, the ring as the
    views ``SplitQueue`` checked when the driver made it ready; the C code checks
    every descriptor against the regions as ``SplitQueue`` does.  The queue's
    positions (``next_avail``, ``next_used``) move to C for a pass and back after
    it; while the thread serves, C alone holds them.
    """

    def __init__(self, disk: DiskImage, serial: bytes) -> None:
        from pyvmm.host._disk_cffi import ffi, lib  # type: ignore[import-not-found]

        self._ffi, self._lib = ffi, lib
        self._held: list[object] = []
        self._queue: SplitQueue | None = None
        self._stop_fd = -1
        self.stopping = False
        #: O_DIRECT's aligned bounce buffer, for unaligned guest buffers (as DiskImage's).
        bounce = mmap.mmap(-1, BOUNCE_SIZE) if disk.direct else None  # page-aligned
        self._bounce = ffi.from_buffer("uint8_t[]", bounce) if bounce is not None else ffi.NULL
        self.c: Any = ffi.new("pyvmm_blk *", {
            "fd": disk.fd, "readonly": int(disk.readonly), "size": disk.size,
            "serial": serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0"),
            "bounce": self._bounce, "bounce_size": len(bounce) if bounce is not None else 0,
            "seg_max": SEG_MAX, "size_max": SIZE_MAX,
            "max_discard_sectors": MAX_DISCARD_SECTORS,
            "max_write_zeroes_sectors": MAX_WRITE_ZEROES_SECTORS,
            "kick_fd": -1, "call_fd": -1, "stop_fd": -1})
        self._logged_errors = 0

    def load(self, memory: GuestMemory, queue: SplitQueue) -> None:
        """The driver is up: point C at guest RAM and at the ring if it is ready."""
        ffi, c = self._ffi, self.c
        held = bind_c_regions(ffi, c, memory, "virtio-blk")
        c.budget_ns = int(max(SERVE_BUDGET_SECONDS, 0) * 1e9)
        held += bind_c_ring(ffi, c.q, queue, memory)
        self._held = held
        self._queue = queue

    def unload(self) -> None:
        c = self.c
        c.nregions = 0
        c.q.desc = c.q.avail = c.q.used = self._ffi.NULL
        self._held = []
        self._queue = None

    def _to_c(self) -> None:
        if self._queue is not None:
            self.c.q.next_avail, self.c.q.next_used = \
                self._queue.next_avail, self._queue.next_used

    def _from_c(self) -> None:
        if self._queue is not None:
            self._queue.next_avail, self._queue.next_used = \
                self.c.q.next_avail, self.c.q.next_used

    def run(self) -> tuple[int, str | None]:
        """One pass over the queue: (PYVMM_BLK_* bits, the error of a malformed ring)."""
        if self.c.q.desc == self._ffi.NULL:
            return 0, None
        self._to_c()
        status = self._lib.pyvmm_blk_process(self.c)
        self._from_c()
        if status & _LOOP_ERROR:
            return status, self._ffi.string(self.c.error).decode()
        return status, None

    def log_errors(self, path: str) -> None:
        """Say once how many host I/O errors the guest was told of since the last time."""
        count = int(self.c.io_errors)
        if count > self._logged_errors:
            log.warning("virtio-blk: %s: %d I/O error(s), the last: %s", path,
                        count - self._logged_errors, os.strerror(self.c.last_errno))
            self._logged_errors = count

    # -- the serving thread ----------------------------------------------------------------

    def start_serving(self, kick_fd: int, call_fd: int,
                      pulse: tuple[int, int] | None = None) -> None:
        c = self.c
        c.kick_fd, c.call_fd = kick_fd, call_fd
        bind_c_interrupt(self._ffi, c.irq, pulse)
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        c.stop_fd = self._stop_fd
        self.stopping = False
        self._to_c()

    def serve(self) -> str | None:
        """The thread's body: C serves the queue until stopped; the error that ended it
        (a malformed ring), or None."""
        status = self._lib.pyvmm_blk_serve(self.c)
        if status & _LOOP_ERROR:
            return self._ffi.string(self.c.error).decode()
        return None

    def stop_serving(self, thread: threading.Thread) -> None:
        self.stopping = True
        os.eventfd_write(self._stop_fd, 1)
        thread.join()
        os.close(self._stop_fd)
        self._stop_fd = self.c.stop_fd = -1
        self._from_c()
