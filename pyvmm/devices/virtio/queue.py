"""The virtio 1.x split virtqueue, device side, over untrusted guest memory.

Everything here is read from memory the guest controls, so every address and
length is checked: a descriptor outside guest RAM, a chain longer than the
queue (which includes any loop), a nested or malformed indirect table, or a
readable descriptor after a writable one raises ``QueueError``.  A chain,
indirect tables included, holds at most as many descriptors as the queue
(QEMU's limit too), so the work of popping one is bounded.  The caller
(the transport) then puts the device in ``DEVICE_NEEDS_RESET``; nothing here
touches host memory outside the guest, because every access goes through
``GuestMemory``'s bounds checks.

Buffers are handed to devices as ``memoryview``s into guest RAM: no copies.
The ring views are taken once when the queue becomes ready, so popping a chain
is a few ``struct.unpack_from`` calls on them.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from pyvmm.host.barrier import fence
from pyvmm.errors import DeviceError, GuestMemoryError, PyvmmError
from pyvmm.memory import GuestMemory

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

#: Largest queue we offer (QueueNumMax); virtio allows up to 32768.
QUEUE_MAX_SIZE = 256

_DESC = struct.Struct("<QIHH")     # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")  # id, len


class QueueError(PyvmmError):
    """The driver handed us a malformed ring or descriptor chain."""


@dataclass
class DescriptorChain:
    """One request: the head index and its buffers, readable first then writable."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_length(self) -> int:
        return sum(len(view) for view in self.readable)

    @property
    def writable_length(self) -> int:
        return sum(len(view) for view in self.writable)


class SplitQueue:
    """One virtqueue: the registers the driver sets, and the rings once ready."""

    def __init__(self, max_size: int = QUEUE_MAX_SIZE) -> None:
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset."""
        self.size = self.max_size
        self.ready = False
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.event_idx = False
        self.next_avail = 0
        self.next_used = 0
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None

    # -- set-up -----------------------------------------------------------------

    def activate(self, memory: GuestMemory, event_idx: bool) -> None:
        """Check the driver's layout and take views of the three rings.

        Raises QueueError for a size that is not a power of two, misaligned
        rings, or rings outside guest RAM.
        """
        size = self.size
        if size == 0 or size > self.max_size or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two <= {self.max_size}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise QueueError("virtqueue rings are misaligned")
        try:
            self._desc = memory.view(self.desc_addr, 16 * size)
            # flags, idx, ring[size], used_event
            self._avail = memory.view(self.avail_addr, 6 + 2 * size)
            # flags, idx, ring[size] of (id, len), avail_event
            self._used = memory.view(self.used_addr, 6 + 8 * size)
        except GuestMemoryError as exc:
            raise QueueError(f"virtqueue ring outside guest RAM: {exc}") from None
        self.event_idx = event_idx
        self.next_avail = 0
        self.next_used = 0

    # -- snapshot ---------------------------------------------------------------

    def to_state(self) -> dict:
        """The driver's layout and how far the device has got in the rings."""
        return {"size": self.size, "ready": self.ready, "desc": self.desc_addr,
                "avail": self.avail_addr, "used": self.used_addr,
                "event_idx": self.event_idx, "next_avail": self.next_avail,
                "next_used": self.next_used}

    def from_state(self, state: dict, memory: GuestMemory) -> None:
        """Take ``to_state``'s values; a ready queue's rings are checked and mapped again
        (QueueError if the layout is not one a driver could have set)."""
        self.reset()
        self.size, self.desc_addr = state["size"], state["desc"]
        self.avail_addr, self.used_addr = state["avail"], state["used"]
        if state["ready"]:
            self.activate(memory, bool(state["event_idx"]))
            self.ready = True
        self.event_idx = bool(state["event_idx"])
        self.next_avail = state["next_avail"] & 0xFFFF
        self.next_used = state["next_used"] & 0xFFFF

    # -- the driver's side, as the device reads it ----------------------------

    def has_available(self) -> bool:
        assert self._avail is not None
        return _U16.unpack_from(self._avail, 2)[0] != self.next_avail

    def pop(self, memory: GuestMemory) -> DescriptorChain | None:
        """The next available chain, or None.  QueueError if it is malformed."""
        avail = self._avail
        assert avail is not None
        avail_idx = _U16.unpack_from(avail, 2)[0]
        if avail_idx == self.next_avail:
            return None
        if (avail_idx - self.next_avail) & 0xFFFF > self.size:
            raise QueueError(f"available index {avail_idx} ran more than the queue size "
                             f"ahead of {self.next_avail}")
        head = _U16.unpack_from(avail, 4 + 2 * (self.next_avail % self.size))[0]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if head >= self.size:
            raise QueueError(f"descriptor head {head} is past the queue size {self.size}")
        chain = DescriptorChain(head)
        self._walk(memory, self._desc, self.size, head, chain, indirect_allowed=True)
        return chain

    def unpop(self, count: int) -> None:
        """Put back the last ``count`` chains popped and not used (QEMU's
        virtqueue_unpop): a device that found them too small for its data."""
        self.next_avail = (self.next_avail - count) & 0xFFFF

    def _walk(self, memory: GuestMemory, table: memoryview | None, table_size: int,
              index: int, chain: DescriptorChain, indirect_allowed: bool) -> None:
        assert table is not None
        seen = 0
        while True:
            seen += 1
            if seen > table_size:
                raise QueueError("descriptor chain is longer than its table (a loop?)")
            addr, length, flags, next_index = _DESC.unpack_from(table, 16 * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not indirect_allowed or flags & VIRTQ_DESC_F_NEXT:
                    raise QueueError("nested or chained indirect descriptor table")
                if length == 0 or length % 16:
                    raise QueueError(f"indirect table length {length} is not a multiple of 16")
                count = length // 16
                if count > self.size:
                    raise QueueError(f"indirect table of {count} descriptors is larger "
                                     f"than the queue ({self.size})")
                try:
                    indirect = memory.view(addr, length)
                except GuestMemoryError as exc:
                    raise QueueError(f"indirect table outside guest RAM: {exc}") from None
                self._walk(memory, indirect, count, 0, chain, indirect_allowed=False)
                return
            if len(chain.readable) + len(chain.writable) >= self.size:
                raise QueueError(f"descriptor chain is longer than the queue ({self.size})")
            try:
                view = memory.view(addr, length)
            except GuestMemoryError as exc:
                raise QueueError(f"descriptor buffer outside guest RAM: {exc}") from None
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append(view)
            elif chain.writable:
                raise QueueError("a device-readable descriptor follows a writable one")
            else:
                chain.readable.append(view)
            if not flags & VIRTQ_DESC_F_NEXT:
                return
            if next_index >= table_size:
                raise QueueError(f"next descriptor {next_index} is past the table size")
            index = next_index

    # -- the device's answers -----------------------------------------------

    def add_used(self, head: int, length: int) -> None:
        """Return chain ``head`` to the driver with ``length`` bytes written."""
        used = self._used
        assert used is not None
        _USED_ELEM.pack_into(used, 4 + 8 * (self.next_used % self.size), head, length)
        self.next_used = (self.next_used + 1) & 0xFFFF
        # x86 keeps stores in order, so the element is visible before the index.
        _U16.pack_into(used, 2, self.next_used)

    def set_avail_event(self) -> None:
        """With EVENT_IDX: ask to be notified only for chains after those taken."""
        if self.event_idx and self._used is not None:
            _U16.pack_into(self._used, 4 + 8 * self.size, self.next_avail)
            # The caller re-reads avail idx next: that load must not pass this
            # store, or a chain added meanwhile goes unnoticed (virtio 1.2 §2.7.10).
            fence()

    def ask_for_next(self) -> bool:
        """With EVENT_IDX: be notified of the driver's next chain, even with chains
        still available (a device that found them too few).  True if the driver added
        one meanwhile (it may not notify for that one): look again."""
        if not self.event_idx or self._used is None or self._avail is None:
            return False
        seen = _U16.unpack_from(self._avail, 2)[0]
        _U16.pack_into(self._used, 4 + 8 * self.size, seen)
        fence()
        return _U16.unpack_from(self._avail, 2)[0] != seen

    def needs_interrupt(self, used_before: int) -> bool:
        """Whether the driver wants an interrupt for the chains used since ``used_before``."""
        avail = self._avail
        assert avail is not None
        if self.next_used == used_before:
            return False
        # The used idx just stored must be visible before used_event or the
        # flags are read, or an interrupt the driver asked for is lost.
        fence()
        if self.event_idx:
            used_event = _U16.unpack_from(avail, 4 + 2 * self.size)[0]
            # vring_need_event(): was used_event among the indices just published?
            return ((self.next_used - used_event - 1) & 0xFFFF) < \
                ((self.next_used - used_before) & 0xFFFF)
        return not _U16.unpack_from(avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT


def write_into(views: list[memoryview], data: bytes | bytearray | memoryview) -> int:
    """Scatter ``data`` over ``views``; return the bytes written (≤ their total)."""
    offset = 0
    for view in views:
        if offset >= len(data):
            break
        count = min(len(view), len(data) - offset)
        view[:count] = data[offset:offset + count]
        offset += count
    return offset


def read_from(views: list[memoryview], length: int) -> bytes:
    """Gather the first ``length`` bytes of ``views`` (short if they hold less)."""
    parts = []
    remaining = length
    for view in views:
        if remaining <= 0:
            break
        parts.append(bytes(view[:remaining]))
        remaining -= len(view)
    return b"".join(parts)


def bind_c_regions(ffi: Any, c: Any, memory: GuestMemory, device: str) -> list[object]:
    """Point a C serving loop's ``regions``/``nregions`` (``_virtq_source``'s
    pyvmm_ram_region array) at guest RAM; the returned buffers must be kept alive
    while C may use them.  DeviceError where RAM has more ranges than C holds."""
    if len(memory.regions) > len(c.regions):
        raise DeviceError(f"{device}: guest RAM has too many ranges for its C loop")
    held: list[object] = []
    for i, region in enumerate(memory.regions):
        host = ffi.from_buffer("uint8_t[]", memory.view(region.guest_base, region.size))
        held.append(host)
        c.regions[i] = {"gpa": region.guest_base, "size": region.size, "host": host}
    c.nregions = len(memory.regions)
    return held


def bind_c_ring(ffi: Any, ring: Any, queue: SplitQueue, memory: GuestMemory) -> list[object]:
    """Point a C ``pyvmm_ring`` at ``queue``'s three rings if the driver made it ready
    (else NULL); the returned buffers must be kept alive while C may use them."""
    ring.desc = ring.avail = ring.used = ffi.NULL
    if not queue.ready:
        return []
    views = [memory.view(queue.desc_addr, 16 * queue.size),
             memory.view(queue.avail_addr, 6 + 2 * queue.size),
             memory.view(queue.used_addr, 6 + 8 * queue.size)]
    pointers = [ffi.from_buffer("uint8_t[]", view) for view in views]
    ring.desc, ring.avail, ring.used = pointers
    ring.size = queue.size
    ring.event_idx = int(queue.event_idx)
    return pointers


def bind_c_interrupt(ffi: Any, irq: Any, pulse: tuple[int, int] | None) -> None:
    """Give a C serving loop's ``pyvmm_interrupt`` (``_virtq_source``) the machine's
    pulse, (function address, context address), or none (the loop signals its call
    eventfd); the machine keeps what the addresses point to alive."""
    if pulse is None:
        irq.pulse, irq.context = ffi.NULL, ffi.NULL
    else:
        irq.pulse = ffi.cast("int (*)(void *)", pulse[0])
        irq.context = ffi.cast("void *", pulse[1])


class CServingLoop:
    """What the C halves of devices share (the raw disk's, the passt NIC's): their rings
    and guest RAM bound into one C struct (``c``: ``_virtq_source``'s regions, a
    ``pyvmm_ring`` per queue, a ``stop_fd`` and an ``error``), and the queues'
    positions (``next_avail``, ``next_used``), which move to C for a pass and back
    after it; while a thread serves (``serve``, until ``stop_serving``), C alone
    holds them.  Subclasses bind their struct's kick and call eventfds."""

    #: The status bit a C function sets for a malformed ring (``c.error`` says why).
    error_bit = 4

    def __init__(self, ffi: Any, c: Any, serve_function: Any) -> None:
        self._ffi = ffi
        self.c = c
        self._serve_function = serve_function
        #: The queues and their C rings, in pairs, while the driver is up.
        self._queues: list[SplitQueue] = []
        self._rings: list[Any] = []
        #: The buffers C points into, kept alive while it does.
        self._held: list[object] = []
        self._stop_fd = -1
        self.stopping = False

    def bind(self, memory: GuestMemory, queues: list[SplitQueue], rings: list[Any],
             device: str) -> None:
        """The driver is up: point C at guest RAM and at each queue's ring if it is ready."""
        held = bind_c_regions(self._ffi, self.c, memory, device)
        for queue, ring in zip(queues, rings):
            held += bind_c_ring(self._ffi, ring, queue, memory)
        self._held = held
        self._queues, self._rings = queues, rings

    def unbind(self) -> None:
        self.c.nregions = 0
        for ring in self._rings:
            ring.desc = ring.avail = ring.used = self._ffi.NULL
        self._held = []
        self._queues, self._rings = [], []

    def _to_c(self) -> None:
        for queue, ring in zip(self._queues, self._rings):
            ring.next_avail, ring.next_used = queue.next_avail, queue.next_used

    def _from_c(self) -> None:
        for queue, ring in zip(self._queues, self._rings):
            queue.next_avail, queue.next_used = ring.next_avail, ring.next_used

    def _error(self, status: int) -> str | None:
        return self._ffi.string(self.c.error).decode() if status & self.error_bit else None

    def run_pass(self, function: Any, ring: Any) -> tuple[int, str | None]:
        """One pass of ``function`` (a C function of the struct) over ``ring``'s queue:
        (its status bits, the error of a malformed ring)."""
        if ring.desc == self._ffi.NULL:
            return 0, None
        self._to_c()
        status = function(self.c)
        self._from_c()
        return status, self._error(status)

    # -- the serving thread ----------------------------------------------------------------

    def _bind_eventfds(self, kick_fds: list[int], call_fd: int) -> None:
        raise NotImplementedError

    def start_serving(self, kick_fds: list[int], call_fd: int,
                      pulse: tuple[int, int] | None = None) -> None:
        """Bind the eventfds and the machine's interrupt pulse (``bind_c_interrupt``:
        the struct's ``irq``), for ``serve``."""
        self._bind_eventfds(kick_fds, call_fd)
        bind_c_interrupt(self._ffi, self.c.irq, pulse)
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.c.stop_fd = self._stop_fd
        self.stopping = False
        self._to_c()

    def serve(self) -> str | None:
        """The thread's body: C serves the queues until stopped; the error that ended it
        (a malformed ring), or None."""
        return self._error(self._serve_function(self.c))

    def stop_serving(self, thread: threading.Thread) -> None:
        self.stopping = True
        os.eventfd_write(self._stop_fd, 1)
        thread.join()
        os.close(self._stop_fd)
        self._stop_fd = self.c.stop_fd = -1
        self._from_c()
