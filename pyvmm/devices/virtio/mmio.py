"""The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2): a bus device.

The transport owns the registers the driver programs (feature pages, queue
addresses, status) and hands a ``VirtioDevice`` its queues once the driver is
ready.  It knows nothing of KVM: interrupts go out through an ``EdgeTrigger``
(an irqfd in the machine, a counter in tests), and queue notifications arrive
either as writes to ``QUEUE_NOTIFY`` or, in the machine, through an ioeventfd
that the event loop turns into ``notify(queue)``.

Register accesses come from vCPU threads and notifications from the event
loop, so device state is guarded by one lock and the interrupt status by
another (raising an interrupt never waits for a register access).
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Callable, Protocol

from pyvmm.devices.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from pyvmm.devices.virtio.queue import QueueError

log = logging.getLogger(__name__)

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

#: "virt" in little-endian, the first register of every virtio-mmio device.
MMIO_MAGIC = 0x74726976
MMIO_VERSION = 2
#: Vendor ID "PYVM" (any value is allowed; it is informational).
VENDOR_PYVMM = 0x4D565950
#: Size of one device's register window (registers + config space).
MMIO_WINDOW_SIZE = 0x1000

STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

INTERRUPT_USED_BUFFER = 1
INTERRUPT_CONFIG_CHANGE = 2

_U32 = struct.Struct("<I")


class EdgeTrigger(Protocol):
    """An interrupt input that takes edges (an irqfd)."""

    def trigger(self) -> None: ...


class VirtioMmioTransport:
    """The register window of one virtio-mmio device."""

    def __init__(self, device: VirtioDevice, memory, interrupt: EdgeTrigger) -> None:
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self._lock = device.lock
        self._irq_lock = threading.Lock()
        self.interrupt_status = 0
        #: Told, under the interrupt lock, what an InterruptStatus read returns whenever
        #: that changes (and once when set): the machine answers such reads elsewhere for
        #: devices whose back end raises the interrupts (``pyvmm.vcpu.interrupt_status``).
        self.on_reported_status: Callable[[int], None] | None = None
        self._odd_read_logged = False
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.config_generation = 0
        with self._irq_lock:
            self._set_interrupt_status(0)

    # -- interrupts (any thread) --------------------------------------------

    def raise_interrupt(self, cause: int = INTERRUPT_USED_BUFFER) -> None:
        with self._irq_lock:
            self._set_interrupt_status(self.interrupt_status | cause)
        self.interrupt.trigger()

    def reported_status(self) -> int:
        """What an InterruptStatus read returns (interrupt lock held)."""
        if self.device.backend_interrupts:
            return self.interrupt_status | INTERRUPT_USED_BUFFER
        return self.interrupt_status

    def _set_interrupt_status(self, value: int) -> None:
        """(Interrupt lock held.)"""
        self.interrupt_status = value
        if self.on_reported_status is not None:
            self.on_reported_status(self.reported_status())

    def report_status_to(self, listener: Callable[[int], None]) -> None:
        """Set ``on_reported_status`` and tell it the current value."""
        with self._irq_lock:
            self.on_reported_status = listener
            listener(self.reported_status())

    # -- notifications (event loop, or a QUEUE_NOTIFY write) ----------------------

    def notify(self, queue_index: int) -> bool:
        """The driver has new buffers in queue ``queue_index``.

        Returns True when work is left (the device serves one queue's worth
        at a time): the caller should come back after its other events.
        """
        with self._lock:
            if not self.status & STATUS_DRIVER_OK or self.status & STATUS_NEEDS_RESET:
                return False
            if not 0 <= queue_index < len(self.device.queues):
                return False
            try:
                self.device.process_queue(queue_index)
                return self.device.pending(queue_index)
            except QueueError as exc:
                self._needs_reset(str(exc))
                return False

    def _needs_reset(self, why: str) -> None:
        """The driver broke the rules: stop using its queues until it resets us."""
        log.warning("virtio device %d: %s; the device needs a reset",
                    self.device.device_id, why)
        self.status |= STATUS_NEEDS_RESET
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.status & STATUS_DRIVER_OK:
            self.raise_interrupt(INTERRUPT_CONFIG_CHANGE)

    # -- the bus interface ----------------------------------------------------------

    def read(self, offset: int, data: memoryview) -> None:
        if offset >= CONFIG:
            with self._lock:
                self.device.read_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            # The driver must use aligned 32-bit accesses (4.2.2.2); others read zeros.
            if not self._odd_read_logged:
                self._odd_read_logged = True
                log.warning("virtio-mmio: %d-byte read at %#x answered with zeros "
                            "(registers are 32-bit)", len(data), offset)
            data[:] = bytes(len(data))
            return
        data[:] = self._read_register(offset).to_bytes(4, "little")

    def _read_register(self, offset: int) -> int:
        device = self.device
        if offset == MAGIC_VALUE:
            return MMIO_MAGIC
        if offset == VERSION:
            return MMIO_VERSION
        if offset == DEVICE_ID:
            return device.device_id
        if offset == VENDOR_ID:
            return VENDOR_PYVMM
        if offset == INTERRUPT_STATUS:
            with self._irq_lock:
                return self.reported_status()
        with self._lock:
            if offset == DEVICE_FEATURES:
                if self.device_features_sel > 1:
                    return 0
                return device.device_features() >> (32 * self.device_features_sel) \
                    & 0xFFFFFFFF
            if offset == QUEUE_NUM_MAX:
                queue = self._selected_queue()
                return queue.max_size if queue is not None else 0
            if offset == QUEUE_READY:
                queue = self._selected_queue()
                return int(queue is not None and queue.ready)
            if offset == STATUS:
                return self.status
            if offset == CONFIG_GENERATION:
                return self.config_generation
            if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
                return 0xFFFFFFFF  # no shared memory regions
        return 0

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset >= CONFIG:
            with self._lock:
                if self.status & STATUS_DRIVER:
                    self.device.write_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            log.debug("virtio-mmio: ignored %d-byte write at %#x", len(data), offset)
            return
        value = _U32.unpack(data)[0]
        if offset == QUEUE_NOTIFY:
            self.notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            with self._irq_lock:
                self._set_interrupt_status(self.interrupt_status & ~value)
        else:
            with self._lock:
                self._write_register(offset, value)

    def _write_register(self, offset: int, value: int) -> None:
        if offset == STATUS:
            self._write_status(value)
        elif offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            if self.status & STATUS_FEATURES_OK or self.driver_features_sel > 1:
                return
            shift = 32 * self.driver_features_sel
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) \
                | (value << shift)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        else:
            self._write_queue_register(offset, value)

    def _write_queue_register(self, offset: int, value: int) -> None:
        queue = self._selected_queue()
        if queue is None:
            return
        if offset == QUEUE_READY:
            if value & 1 and not queue.ready:
                try:
                    queue.activate(self.memory, self._negotiated(29))
                except QueueError as exc:
                    self._needs_reset(str(exc))
                    return
                queue.ready = True
            elif not value & 1:
                queue.ready = False
            return
        if queue.ready:
            return  # the layout of a live queue can't change
        if offset == QUEUE_NUM:
            queue.size = value
        elif offset == QUEUE_DESC_LOW:
            queue.desc_addr = (queue.desc_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DESC_HIGH:
            queue.desc_addr = (queue.desc_addr & 0xFFFFFFFF) | value << 32
        elif offset == QUEUE_DRIVER_LOW:
            queue.avail_addr = (queue.avail_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DRIVER_HIGH:
            queue.avail_addr = (queue.avail_addr & 0xFFFFFFFF) | value << 32
        elif offset == QUEUE_DEVICE_LOW:
            queue.used_addr = (queue.used_addr & ~0xFFFFFFFF) | value
        elif offset == QUEUE_DEVICE_HIGH:
            queue.used_addr = (queue.used_addr & 0xFFFFFFFF) | value << 32

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.device.reset()
            self._reset_registers()
            return
        added = value & ~self.status
        if added & STATUS_FEATURES_OK:
            offered = self.device.device_features()
            if self.driver_features & ~offered or not self._negotiated(VIRTIO_F_VERSION_1):
                value &= ~STATUS_FEATURES_OK  # refuse: the driver reads it back
        if added & STATUS_DRIVER_OK and not self.status & STATUS_NEEDS_RESET:
            if not value & STATUS_FEATURES_OK:
                return
            self.status = value
            self.device.activate(self.memory, self.driver_features,
                                 lambda: self.raise_interrupt(INTERRUPT_USED_BUFFER),
                                 self._needs_reset)
            # Buffers queued before DRIVER_OK (without a notification) are served now.
            for index, queue in enumerate(self.device.queues):
                if queue.ready:
                    self.notify(index)
            return
        self.status = value | (self.status & STATUS_NEEDS_RESET)

    def _negotiated(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    def _selected_queue(self):
        if self.queue_sel < len(self.device.queues):
            return self.device.queues[self.queue_sel]
        return None

    # -- snapshot ---------------------------------------------------------------------

    def to_state(self) -> dict:
        """The registers, every queue and the device's own state, as plain values."""
        with self._lock:
            # First: a device whose thread serves its queues hands their positions back.
            device_state = self.device.to_state()
        with self._lock, self._irq_lock:
            return {"device_id": self.device.device_id, "status": self.status,
                    "device_features_sel": self.device_features_sel,
                    "driver_features_sel": self.driver_features_sel,
                    "driver_features": self.driver_features, "queue_sel": self.queue_sel,
                    "config_generation": self.config_generation,
                    "interrupt_status": self.interrupt_status,
                    "queues": [queue.to_state() for queue in self.device.queues],
                    "device": device_state}

    def from_state(self, state: dict) -> None:
        """Take ``to_state``'s values: a device the driver had started serves on at once.

        ValueError for a state of another kind of device or another queue count;
        QueueError for queue layouts outside guest RAM.
        """
        if state["device_id"] != self.device.device_id \
                or len(state["queues"]) != len(self.device.queues):
            raise ValueError(f"virtio device {self.device.device_id}: the saved state is of "
                             f"device {state['device_id']} with {len(state['queues'])} queues")
        with self._lock:
            self.status = state["status"]
            self.device_features_sel = state["device_features_sel"]
            self.driver_features_sel = state["driver_features_sel"]
            self.driver_features = state["driver_features"]
            self.queue_sel = state["queue_sel"]
            self.config_generation = state["config_generation"]
            with self._irq_lock:
                self._set_interrupt_status(state["interrupt_status"])
            for queue, saved in zip(self.device.queues, state["queues"]):
                queue.from_state(saved, self.memory)
            if self.status & STATUS_DRIVER_OK and not self.status & STATUS_NEEDS_RESET:
                self.device.activate(self.memory, self.driver_features,
                                     lambda: self.raise_interrupt(INTERRUPT_USED_BUFFER),
                                     self._needs_reset)
            self.device.from_state(state["device"])

    def shutdown(self) -> None:
        """The VMM is exiting: let the device finish and make data durable."""
        with self._lock:
            self.device.shutdown()
