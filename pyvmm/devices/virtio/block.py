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
from dataclasses import dataclass, field
from typing import Any, Callable

from pyvmm.devices.virtio.device import SERVE_BUDGET_SECONDS, CServedDevice
from pyvmm.host.disk_image import BOUNCE_SIZE, SECTOR_SIZE, DiskImage
from pyvmm.devices.virtio.queue import (CServingLoop, DescriptorChain, QueueError, SplitQueue,
                                        read_from, write_into)
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


class BlockDevice(CServedDevice):
    """One disk: a single request queue, served in C (a raw image) or in Python."""

    device_id = VIRTIO_ID_BLOCK
    thread_name = "virtio-blk"

    def __init__(self, disk: DiskImage, serial: str = "") -> None:
        self.disk = disk
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        #: The C request loop, for an image whose bytes are its file's.
        self._loop = _RequestLoop(disk, self.serial) if disk.plain_file else None
        super().__init__((QUEUE_SIZE,), self._loop)

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
            self._start_thread_if_bound()

    def reset(self) -> None:
        super().reset()
        if self._loop is not None:
            self._loop.unbind()

    def process_queue(self, index: int) -> None:
        if index != 0 or self._kick_thread(0):
            return
        if self._loop is None:
            self.serve(self.queues[0], self._handle)
        elif self.memory is not None:
            status, error = self._loop.run()
            self._loop.log_errors(self.disk.path)
            if status & _LOOP_INTERRUPT:
                self._raise_used()
            if error is not None:
                raise QueueError(error)

    def pending(self, index: int) -> bool:
        return not self.serving and super().pending(index)

    def shutdown(self) -> None:
        """Stop the thread (its pass ends: no request is left half done), then flush."""
        super().shutdown()
        if self._loop is not None:
            self._loop.log_errors(self.disk.path)
        self.disk.close()

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


class _RequestLoop(CServingLoop):
    """The C request loop of a raw disk: its ring, guest RAM and the image's fd as one
    C struct (``pyvmm_blk``), and the passes or the serving loop over it.

    Guest RAM goes over as each region's host address and size, the ring as the
    views ``SplitQueue`` checked when the driver made it ready; the C code checks
    every descriptor against the regions as ``SplitQueue`` does.
    """

    error_bit = _LOOP_ERROR

    def __init__(self, disk: DiskImage, serial: bytes) -> None:
        from pyvmm.host._disk_cffi import ffi, lib  # type: ignore[import-not-found]

        self._lib = lib
        #: O_DIRECT's aligned bounce buffer, for unaligned guest buffers (as DiskImage's).
        bounce = mmap.mmap(-1, BOUNCE_SIZE) if disk.direct else None  # page-aligned
        self._bounce = ffi.from_buffer("uint8_t[]", bounce) if bounce is not None else ffi.NULL
        super().__init__(ffi, ffi.new("pyvmm_blk *", {
            "fd": disk.fd, "readonly": int(disk.readonly), "size": disk.size,
            "serial": serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0"),
            "bounce": self._bounce, "bounce_size": len(bounce) if bounce is not None else 0,
            "seg_max": SEG_MAX, "size_max": SIZE_MAX,
            "max_discard_sectors": MAX_DISCARD_SECTORS,
            "max_write_zeroes_sectors": MAX_WRITE_ZEROES_SECTORS,
            "kick_fd": -1, "call_fd": -1, "stop_fd": -1}), lib.pyvmm_blk_serve)
        self._logged_errors = 0

    def load(self, memory: GuestMemory, queue: SplitQueue) -> None:
        """The driver is up: point C at guest RAM and at the ring if it is ready."""
        self.c.budget_ns = int(max(SERVE_BUDGET_SECONDS, 0) * 1e9)
        self.bind(memory, [queue], [self.c.q], "virtio-blk")

    def run(self) -> tuple[int, str | None]:
        """One pass over the queue: (PYVMM_BLK_* bits, the error of a malformed ring)."""
        return self.run_pass(self._lib.pyvmm_blk_process, self.c.q)

    def log_errors(self, path: str) -> None:
        """Say once how many host I/O errors the guest was told of since the last time."""
        count = int(self.c.io_errors)
        if count > self._logged_errors:
            log.warning("virtio-blk: %s: %d I/O error(s), the last: %s", path,
                        count - self._logged_errors, os.strerror(self.c.last_errno))
            self._logged_errors = count

    def _bind_eventfds(self, kick_fds: list[int], call_fd: int) -> None:
        self.c.kick_fd, self.c.call_fd = kick_fds[0], call_fd
