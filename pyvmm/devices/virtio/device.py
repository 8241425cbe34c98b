"""What every virtio device shares: feature bits, queues, activation, reset.

A device knows nothing of the transport or of KVM: the transport calls
``activate`` with guest memory, the negotiated features and a function that
raises the used-buffer interrupt; after that it calls ``process_queue`` when
the driver notifies.  ``serve`` is the common loop: pop chains, let the device
handle each, publish them as used, then interrupt only if the driver wants it
(``VIRTIO_F_EVENT_IDX`` or the ``NO_INTERRUPT`` flag).

``CServedDevice`` is the base of the devices that a C half of their own serves
on a thread (a raw disk, a NIC over passt's stream).  ``VhostDevice`` is the
base of the devices whose queues another party serves (a vhost-user back end,
or the kernel's vhost through ``KernelVhostDevice``): pyvmm keeps the
registers and the config space and hands the rings over.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from pyvmm.devices.virtio.queue import CServingLoop, DescriptorChain, SplitQueue
from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory

if TYPE_CHECKING:
    from pyvmm.vhost.frontend import VringConfig

# Feature bits common to all devices (virtio 1.2, section 6).
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

#: What every pyvmm device offers on top of its own features.
COMMON_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC) \
    | (1 << VIRTIO_F_EVENT_IDX)

#: Handles one chain; returns the number of bytes it wrote into the chain.
ChainHandler = Callable[[DescriptorChain], int]
#: Most time one ``serve`` call spends before it returns to the event loop
#: (which then answers --timeout, signals and Ctrl-A x, and comes back).
SERVE_BUDGET_SECONDS = 0.02


class VirtioDevice:
    """Base of the virtio devices; subclasses set ``device_id`` and the queues."""

    device_id = 0
    #: True when another process (a vhost-user back end) raises the used-buffer
    #: interrupt through the irqfd itself: the transport then always reports a
    #: used buffer in InterruptStatus, so the driver looks at its queues.
    backend_interrupts = False

    def __init__(self, queue_sizes: tuple[int, ...]) -> None:
        self.queues = [SplitQueue(size) for size in queue_sizes]
        #: Guards queues and device state: the transport holds it for register
        #: accesses and notifications, the device for work from other sources.
        self.lock = threading.RLock()
        self.memory: GuestMemory | None = None
        self.driver_features = 0
        self._raise_used: Callable[[], None] = lambda: None
        self._broken: Callable[[str], None] = lambda why: None

    # -- what the transport asks --------------------------------------------------

    def device_features(self) -> int:
        """The features this device offers (64 bits)."""
        return COMMON_FEATURES

    def read_config(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` from the device configuration space (zeros past its end)."""
        config = self.config_space()
        chunk = config[offset:offset + len(data)]
        data[:len(chunk)] = chunk
        data[len(chunk):] = bytes(len(data) - len(chunk))

    def write_config(self, offset: int, data: bytes | memoryview) -> None:
        """Writable configuration fields; most devices have none."""

    def config_space(self) -> bytes:
        return b""

    @property
    def active(self) -> bool:
        return self.memory is not None

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        """The driver set DRIVER_OK: start serving its queues.

        ``broken(why)`` is for a malformed queue the device finds on its own
        (not in ``process_queue``, whose QueueError the transport catches):
        the transport then sets DEVICE_NEEDS_RESET.
        """
        self.memory = memory
        self.driver_features = driver_features
        self._raise_used = raise_used
        if broken is not None:
            self._broken = broken

    def reset(self) -> None:
        """The driver wrote 0 to the status register: forget everything it set up."""
        for queue in self.queues:
            queue.reset()
        self.memory = None
        self.driver_features = 0
        self._raise_used = lambda: None
        self._broken = lambda why: None

    def to_state(self) -> dict:
        """What the device keeps beyond its queues (the transport saves those); none here."""
        return {}

    def from_state(self, state: dict) -> None:
        """Take ``to_state``'s values (after the transport restored the queues)."""

    def process_queue(self, index: int) -> None:
        """The driver notified queue ``index``."""

    def pending(self, index: int) -> bool:
        """Whether queue ``index`` still has chains that ``process_queue`` left."""
        queue = self.queues[index]
        return self.active and queue.ready and queue.has_available()

    def shutdown(self) -> None:
        """The VMM is exiting: finish or fail what is in flight, make data durable."""

    # -- for subclasses ---------------------------------------------------------------

    def has_feature(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    def serve(self, queue: SplitQueue, handle: ChainHandler) -> int:
        """Handle the available chains of ``queue``; return how many were used.

        At most one queue's worth per call, and no more chains once
        ``SERVE_BUDGET_SECONDS`` are spent, so a driver that keeps adding
        chains (or makes each one slow) can't hold the event loop:
        ``pending`` then says to come back.
        QueueError (a malformed chain) propagates to the transport, which puts
        the device in DEVICE_NEEDS_RESET.
        """
        memory = self.memory
        if memory is None or not queue.ready:
            return 0
        used_before = queue.next_used
        served = 0
        budget_end = time.monotonic() + SERVE_BUDGET_SECONDS
        while True:
            if served >= queue.size or (served and time.monotonic() >= budget_end):
                # Out of budget.  With EVENT_IDX the driver notifies only for a
                # chain at avail_event: publish how far we got, or every chain
                # it adds from now on goes unnoticed (a driver spinning on its
                # buffer, like hvc's, would wait forever).  ``pending`` tells
                # the caller about the chains already there.
                queue.set_avail_event()
                break
            chain = queue.pop(memory)
            if chain is None:
                # With EVENT_IDX, re-check after publishing avail_event: the driver
                # may have added a chain meanwhile without notifying.
                queue.set_avail_event()
                if not queue.has_available():
                    break
                continue
            queue.add_used(chain.head, handle(chain))
            served += 1
        if queue.needs_interrupt(used_before):
            self._raise_used()
        return served


class CServedDevice(VirtioDevice):
    """A device whose C half (``loop``, a ``CServingLoop``) serves its queues.

    Once the machine asked for ``kick_fds`` (it binds them as KVM's ioeventfds)
    and bound ``call_fd`` (its irqfd), a thread of the device's own runs the C
    loop (GIL released) and raises every used-buffer interrupt itself, as a
    vhost back end does: a request costs no Python.  Without them (tests, the
    fuzzer) each notification runs one pass of the C half on the caller's
    thread.  A snapshot pauses the thread (``pause_serving``) so the rings rest
    and their positions are Python's while it reads them.
    """

    #: The serving thread's name.
    thread_name = "virtio"

    def __init__(self, queue_sizes: tuple[int, ...], loop: CServingLoop | None) -> None:
        super().__init__(queue_sizes)
        #: None: this device is served in Python (no ``kick_fds``).
        self._serving_loop = loop
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
        """For a device with a C half only (else AttributeError, so ``getattr(device,
        "kick_fds", None)`` is None): one eventfd per queue, made when the machine asks
        (attach_virtio binds them as KVM's ioeventfds and owns them).

        Asking makes the device back-end served, as a ``VhostDevice`` is: its thread
        raises every used-buffer interrupt through ``call_fd``, never the transport, so
        the machine answers its InterruptStatus reads and absorbs its ACKs without
        Python (``pyvmm.vcpu.interrupt_status``)."""
        if self._serving_loop is None:
            raise AttributeError(f"kick_fds: this {self.thread_name} is served from the loop")
        if self._kick_fds is None:
            self._kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                              for _ in self.queues]
            self.backend_interrupts = True
        return self._kick_fds

    @property
    def serving(self) -> bool:
        """Whether the queues are the thread's (it serves them, or will again after a
        pause): the caller's passes leave them alone."""
        return self._thread is not None or self._paused

    def reset(self) -> None:
        self._stop_thread()
        super().reset()

    def shutdown(self) -> None:
        """Stop the thread (its pass ends: no request is left half done)."""
        self._stop_thread()

    def pause_serving(self) -> None:
        """The machine pauses (for a snapshot): the thread stops after its pass, so the
        rings rest and the queues' positions are Python's until ``resume_serving``.
        The back end stays with the thread meanwhile (``_serving_moved`` is not told):
        what arrives waits there."""
        with self.lock:
            if self._thread is not None:
                self._stop_thread(pausing=True)
                self._paused = True

    def resume_serving(self) -> None:
        with self.lock:
            if self._paused:
                self._paused = False
                if self.active:
                    self._start_thread()
                else:
                    self._serving_moved(False)

    def to_state(self) -> dict:
        """Nothing of its own.  With the thread serving, the queues' positions are C's:
        stop it (its pass ends) and start it again, so the transport saves them."""
        if self._thread is not None:
            self._stop_thread(pausing=True)
            self._start_thread()
        return {}

    # -- for subclasses ---------------------------------------------------------------

    def _serving_moved(self, to_thread: bool) -> None:
        """The queues went to the thread, or came back to the caller's passes."""

    def _serving_failed(self, error: str) -> None:
        """The thread found a malformed ring (the lock is held)."""
        self._broken(error)

    def _start_thread_if_bound(self) -> None:
        """After ``activate`` loaded the C half: serve on the thread if the machine bound
        the eventfds."""
        if self.call_fd is not None and self._kick_fds is not None:
            self._start_thread()

    def _kick_thread(self, index: int) -> bool:
        """A notify that reached Python (not KVM's ioeventfd): pass it to the thread;
        False if no thread serves."""
        if self._thread is None or self._kick_fds is None:
            return False
        os.eventfd_write(self._kick_fds[index], 1)
        return True

    def _start_thread(self) -> None:
        loop = self._serving_loop
        assert loop is not None and self._kick_fds is not None and self.call_fd is not None
        loop.start_serving(self._kick_fds, self.call_fd, self.interrupt_pulse)
        self._serving_moved(True)
        self._thread = threading.Thread(target=self._serve, name=self.thread_name,
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        loop = self._serving_loop
        assert loop is not None
        error = loop.serve()
        if error is None:
            return
        # Report under the lock, unless a reset or a stop (which hold it) is stopping us.
        while not loop.stopping:
            if self.lock.acquire(timeout=0.05):
                try:
                    if not loop.stopping:
                        self._serving_failed(error)
                finally:
                    self.lock.release()
                return

    def _stop_thread(self, pausing: bool = False) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            assert self._serving_loop is not None
            self._serving_loop.stop_serving(thread)
        if pausing or (thread is None and not self._paused):
            return
        self._paused = False
        self._serving_moved(False)


class VhostDevice(VirtioDevice):
    """A device whose queues a back end serves straight from guest RAM, not Python.

    When the driver sets DRIVER_OK the rings go to the back end with their
    eventfds: each queue's kick (``kick_fds``, which the machine binds as the
    queue's ioeventfd: KVM signals it on the driver's notify) and the device's
    call (``call_fd``, the machine's irqfd: the back end interrupts the guest
    itself, hence ``backend_interrupts``).  The device knows nothing of KVM.
    Subclasses say how the rings start (``_start_backend``) and stop
    (``_stop_backend``: before the driver reuses their memory).
    """

    backend_interrupts = True
    #: Named in errors.
    backend_name = "vhost"
    #: How many leading queues the back end serves (None: all); the others are the
    #: device's own, their kick brought to ``process_queue`` by the event loop
    #: (``loop_queues``).
    backend_queues: int | None = None
    #: Start only once every queue the back end serves is ready (a NIC's pair).
    needs_every_queue = False

    def __init__(self, queue_sizes: tuple[int, ...], on_failure: Callable[[str], None]) -> None:
        super().__init__(queue_sizes)
        self._on_failure = on_failure
        #: One eventfd per queue: KVM signals it on the driver's notify, the back end reads it.
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        self.call_fd: int | None = None
        #: The rings the back end serves now (None: not started).
        self._started: list[int] | None = None

    def _start_backend(self, memory: GuestMemory, driver_features: int,
                       rings: Sequence[VringConfig]) -> None:
        """Hand ``rings`` over (DeviceError if the back end refuses)."""
        raise NotImplementedError

    def _stop_backend(self, started: Sequence[int]) -> None:
        """Take the ``started`` rings back (DeviceError if the back end refuses)."""
        raise NotImplementedError

    def activate(self, memory: GuestMemory, driver_features: int,
                 raise_used: Callable[[], None],
                 broken: Callable[[str], None] | None = None) -> None:
        from pyvmm.vhost.frontend import VringConfig  # a plain boot never loads vhost-user

        super().activate(memory, driver_features, raise_used, broken)
        if self.call_fd is None:
            raise DeviceError(f"{self.backend_name} device: no interrupt eventfd bound")
        served = self.queues[:self.backend_queues]
        rings = [VringConfig(index, queue.size, queue.desc_addr, queue.avail_addr,
                             queue.used_addr, self.kick_fds[index], self.call_fd)
                 for index, queue in enumerate(served) if queue.ready]
        if self.needs_every_queue and len(rings) < len(served):
            return  # a driver that set up part of them: nothing to hand over
        try:
            self._start_backend(memory, driver_features, rings)
        except DeviceError as exc:
            self._on_failure(str(exc))
            return
        self._started = [ring.index for ring in rings]

    def process_queue(self, index: int) -> None:
        """A notify that reached us (not KVM's ioeventfd): pass it on to the back end."""
        if self._started is not None and index in self._started:
            os.eventfd_write(self.kick_fds[index], 1)

    def pending(self, index: int) -> bool:
        return False  # the back end owns the rings

    def reset(self) -> None:
        """Take the rings back before the driver reuses their memory."""
        started, self._started = self._started, None
        if started is not None:
            try:
                self._stop_backend(started)
            except DeviceError as exc:
                self._on_failure(str(exc))
        super().reset()

    def shutdown(self) -> None:
        """The VMM is exiting, and the back end with it (or closing its fd stops it):
        nothing more is asked of it."""
        self._started = None

    def close(self) -> None:
        """Close the kick eventfds (the machine's, once KVM no longer signals them)."""
        for fd in self.kick_fds:
            os.close(fd)
        self.kick_fds = []


class KernelQueues(Protocol):
    """What a ``KernelVhostDevice`` needs of the kernel's vhost (``pyvmm.vhost.vhost_net``,
    ``pyvmm.vhost.vsock``): unlike vhost-user, it reads guest RAM through pyvmm's own
    mappings."""

    def start(self, features: int, memory: GuestMemory, rings: Sequence[VringConfig]) -> None:
        """Hand the rings (guest-physical addresses) and the negotiated features over."""

    def stop(self) -> None:
        """Take the rings back (the driver reset the device)."""


class KernelVhostDevice(VhostDevice):
    """A device whose queues the host kernel's vhost serves (vhost-net, vhost-vsock)."""

    def __init__(self, queue_sizes: tuple[int, ...], kernel: KernelQueues,
                 on_failure: Callable[[str], None]) -> None:
        super().__init__(queue_sizes, on_failure)
        self._kernel = kernel

    def _start_backend(self, memory: GuestMemory, driver_features: int,
                       rings: Sequence[VringConfig]) -> None:
        self._kernel.start(driver_features, memory, rings)

    def _stop_backend(self, started: Sequence[int]) -> None:
        self._kernel.stop()
