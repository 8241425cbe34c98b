"""The raw disk's C request loop (``pyvmm/host/_disk_build.py``): its refusals of
malformed rings, its serving thread on eventfds, and the overlay that stays in Python."""

from __future__ import annotations

import os
import select
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.virtio.block import (VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD,
                                        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
                                        VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
                                        VIRTIO_BLK_T_WRITE_ZEROES, BlockDevice)
from pyvmm.devices.virtio.device import COMMON_FEATURES
from pyvmm.devices.virtio.mmio import STATUS_NEEDS_RESET, VirtioMmioTransport
from pyvmm.devices.virtio.queue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                                        VIRTQ_DESC_F_WRITE, QueueError)
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue
from pyvmm.host.disk_image import DiskImage
from pyvmm.memory import GuestMemory

SECTORS = 64
RAM = 4 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SECTORS * 2))
    return path


def _device(image, event_idx=False):
    memory = GuestMemory.from_bytes(RAM)
    device = BlockDevice(DiskImage(str(image)))
    driver = DriverQueue(memory, 0x10000, size=16)
    driver.configure(device.queues[0], event_idx=event_idx)
    return memory, device, driver


def _read_chain(driver, sector=0, length=512):
    header = driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
    data = driver.alloc(length)
    status = driver.alloc(1, b"\xee")
    return [(header, 16, False), (data, length, True), (status, 1, True)], data, status


def test_a_raw_image_is_served_in_c_and_an_overlay_in_python(image) -> None:
    from pyvmm.host.cow_image import CowImage

    raw = BlockDevice(DiskImage(str(image)))
    assert raw._loop is not None
    raw.shutdown()
    overlay = BlockDevice(CowImage(str(image)))
    assert overlay._loop is None and getattr(overlay, "kick_fds", None) is None
    overlay.shutdown()


def _malformed(driver, memory):
    """(what the driver does wrong, how it does it), each a function of the driver."""
    def outside_ram():
        driver.write_descriptor(0, RAM - 8, 16, 0)
        driver.make_available(0)

    def loop():
        driver.write_descriptor(0, 0x200000, 16, VIRTQ_DESC_F_NEXT, 1)
        driver.write_descriptor(1, 0x200000, 16, VIRTQ_DESC_F_NEXT, 0)
        driver.make_available(0)

    def readable_after_writable():
        driver.write_descriptor(0, 0x200000, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
        driver.write_descriptor(1, 0x200100, 16, 0)
        driver.make_available(0)

    def nested_indirect():
        table = driver.alloc(16)
        driver.write_descriptor(0, table, 16, VIRTQ_DESC_F_INDIRECT, table=table)
        driver.write_descriptor(0, table, 16, VIRTQ_DESC_F_INDIRECT)
        driver.make_available(0)

    def indirect_of_bad_length():
        driver.write_descriptor(0, driver.alloc(24), 24, VIRTQ_DESC_F_INDIRECT)
        driver.make_available(0)

    def head_past_the_queue():
        driver.make_available(16)

    def index_far_ahead():
        driver.set_avail_index(17)

    def next_past_the_table():
        driver.write_descriptor(0, 0x200000, 16, VIRTQ_DESC_F_NEXT, 16)
        driver.make_available(0)

    return {"outside guest RAM": outside_ram, "longer than its table": loop,
            "follows a writable one": readable_after_writable,
            "nested or chained indirect": nested_indirect,
            "not a multiple of 16": indirect_of_bad_length,
            "head is past the queue size": head_past_the_queue,
            "more than the queue size ahead": index_far_ahead,
            "past the table size": next_past_the_table}


@pytest.mark.parametrize("case", list(_malformed(None, None)))
def test_the_c_loop_refuses_a_malformed_ring(image, case) -> None:
    memory, device, driver = _device(image)
    device.activate(memory, COMMON_FEATURES, lambda: None)
    before = image.read_bytes()
    _malformed(driver, memory)[case]()
    with pytest.raises(QueueError, match=case):
        device.process_queue(0)
    assert image.read_bytes() == before


def test_a_malformed_ring_puts_the_transport_in_needs_reset(image) -> None:
    memory, device, driver = _device(image)
    transport = VirtioMmioTransport(device, memory, CountingTrigger())
    transport.status = 0xF  # DRIVER_OK, as a driver leaves it
    device.activate(memory, COMMON_FEATURES, lambda: None)
    _malformed(driver, memory)["outside guest RAM"]()
    transport.notify(0)
    assert transport.status & STATUS_NEEDS_RESET


class CountingPulse:
    """The machine's interrupt pulse as a serving thread sees it: a C function and its
    context by address (a cffi callback here) that counts its calls, the contexts it was
    given, and answers ``answer`` (0: the guest was interrupted; else: failed)."""

    def __init__(self, ffi, answer: int = 0) -> None:
        self.calls = 0
        self.answer = answer
        self.contexts: set[int] = set()

        def pulse(context) -> int:
            self.calls += 1
            self.contexts.add(int(ffi.cast("uintptr_t", context)))
            return self.answer

        self._callback = ffi.callback("int(void *)", pulse)
        self._context = ffi.new("int *")
        self.context = int(ffi.cast("uintptr_t", self._context))
        self.addresses = (int(ffi.cast("uintptr_t", self._callback)), self.context)


class _Served:
    """A disk served by its thread, as the machine binds it: kick and call eventfds (and
    the machine's interrupt pulse, when given)."""

    def __init__(self, image, event_idx=False, pulse: CountingPulse | None = None) -> None:
        self.memory, self.device, self.driver = _device(image, event_idx)
        self.kick = self.device.kick_fds[0]
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.device.call_fd = self.call
        if pulse is not None:
            self.device.interrupt_pulse = pulse.addresses
        self.why: list[str] = []
        self.device.activate(self.memory, COMMON_FEATURES, lambda: None, self.why.append)

    def kick_and_wait(self) -> None:
        os.eventfd_write(self.kick, 1)
        ready, _, _ = select.select([self.call], [], [], 5)
        assert ready, "no interrupt from the serving thread"
        os.eventfd_read(self.call)

    def close(self) -> None:
        self.device.shutdown()
        os.close(self.kick)
        os.close(self.call)


def test_the_thread_serves_kicks_and_interrupts_through_the_eventfds(image) -> None:
    served = _Served(image)
    try:
        assert served.device.backend_interrupts
        assert served.device._thread is not None and served.device._thread.is_alive()
        chain, data, status = _read_chain(served.driver, sector=3)
        served.driver.add_chain(chain)
        served.kick_and_wait()
        assert served.driver.take_used() == [(0, 513)]
        assert served.memory.read_u8(status) == VIRTIO_BLK_S_OK
        assert served.memory.read(data, 512) == image.read_bytes()[3 * 512:4 * 512]
        assert not served.device.pending(0)  # the thread's, not the loop's
    finally:
        served.close()


def test_the_thread_interrupts_through_the_machines_pulse_and_falls_back_to_the_eventfd(
        image) -> None:
    """Given the machine's pulse, the thread calls it (with its context) instead of
    signalling the call eventfd; a pulse that fails leaves the interrupt to the eventfd."""
    from pyvmm.host._disk_cffi import ffi  # type: ignore[import-not-found]

    pulse = CountingPulse(ffi)
    served = _Served(image, pulse=pulse)
    try:
        served.driver.add_chain(_read_chain(served.driver, sector=1)[0])
        os.eventfd_write(served.kick, 1)
        deadline = time.monotonic() + 5
        while not pulse.calls and time.monotonic() < deadline:
            time.sleep(0.002)
        assert (pulse.calls, pulse.contexts) == (1, {pulse.context})
        assert served.driver.take_used() == [(0, 513)]
        assert not select.select([served.call], [], [], 0.05)[0]  # the eventfd stayed quiet
        pulse.answer = -9  # the pulse fails (EBADF): the eventfd carries the interrupt
        served.driver.add_chain(_read_chain(served.driver, sector=2)[0])
        served.kick_and_wait()
        assert pulse.calls == 2 and served.device._loop.c.irq.failures == 1
        assert [length for _, length in served.driver.take_used()] == [513]
    finally:
        served.close()


def test_a_malformed_ring_under_the_thread_is_reported_and_the_thread_ends(image) -> None:
    served = _Served(image)
    try:
        thread = served.device._thread
        _malformed(served.driver, served.memory)["outside guest RAM"]()
        os.eventfd_write(served.kick, 1)
        deadline = time.monotonic() + 5
        while not served.why and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.why and "outside guest RAM" in served.why[0]
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()
    finally:
        served.close()


def test_reset_and_shutdown_join_the_thread_and_hand_the_positions_back(image) -> None:
    served = _Served(image)
    try:
        for sector in range(3):
            served.driver.add_chain(_read_chain(served.driver, sector)[0])
        served.kick_and_wait()
        thread = served.device._thread
        state_before = served.device.queues[0].next_used
        served.device.to_state()  # a snapshot: the thread stops and starts again
        assert served.device.queues[0].next_avail == 3 == served.device.queues[0].next_used
        assert state_before == 0 and not thread.is_alive()
        assert served.device._thread is not None and served.device._thread.is_alive()
        again = served.device._thread
        served.device.reset()
        assert not again.is_alive() and served.device._thread is None
    finally:
        served.close()
    assert threading.active_count() == 1 or all(
        t.name != "virtio-blk" for t in threading.enumerate())


def test_paused_for_a_snapshot_the_thread_leaves_the_ring_alone(image) -> None:
    served = _Served(image)
    try:
        served.device.pause_serving()
        assert served.device._thread is None
        chain, data, status = _read_chain(served.driver, sector=2)
        served.driver.add_chain(chain)
        os.eventfd_write(served.kick, 1)
        time.sleep(0.1)
        assert served.driver.used_index() == 0 and served.memory.read_u8(status) == 0xEE
        served.device.resume_serving()  # serves what came meanwhile, at once
        ready, _, _ = select.select([served.call], [], [], 5)
        assert ready and served.driver.take_used() == [(0, 513)]
    finally:
        served.close()


def test_a_write_is_in_the_file_after_shutdown(image) -> None:
    served = _Served(image)
    header = served.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 9))
    data = served.driver.alloc(512, b"\x42" * 512)
    status = served.driver.alloc(1, b"\xee")
    served.driver.add_chain([(header, 16, False), (data, 512, False), (status, 1, True)])
    flush = served.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_FLUSH, 0, 0))
    flushed = served.driver.alloc(1, b"\xee")
    served.driver.add_chain([(flush, 16, False), (flushed, 1, True)])
    served.kick_and_wait()
    served.close()
    assert served.memory.read_u8(status) == VIRTIO_BLK_S_OK == served.memory.read_u8(flushed)
    assert image.read_bytes()[9 * 512:10 * 512] == b"\x42" * 512


class _ServedInPython(DiskImage):
    """A raw image the C loop leaves alone: Python's executor serves it, to compare."""

    plain_file = False


_kinds = st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
                          VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
                          VIRTIO_BLK_T_WRITE_ZEROES, 7])
_segment = st.builds(lambda sector, count, flags: struct.pack("<QII", sector, count, flags),
                     st.sampled_from([0, 1, SECTORS - 2, SECTORS, 2**63]),
                     st.sampled_from([0, 1, 2, 3, 1 << 16, (1 << 16) + 1]), st.integers(0, 3))
_request = st.tuples(
    _kinds,
    st.sampled_from([0, 1, 5, 5, SECTORS - 1, SECTORS, 2**64 - 1]),  # sector
    st.lists(st.sampled_from([0, 1, 16, 20, 100, 512, 512, 1024]), max_size=4),  # buffers
    st.sampled_from([0, 0, 1, 1, 2, 3]),  # 0: data readable, 1: writable, 2: a segment, 3: both
    st.sampled_from([0, 1, 2]),          # header split: whole, 8 + 8, 4 bytes short
    st.sampled_from([1, 1, 0, 3]),       # the status buffer's length
    _segment)


def _submit(driver, memory, request, salt):
    """Lay ``request`` out as a chain (the same bytes whichever device gets it)."""
    kind, sector, buffers, direction, split, status_length, segment = request
    header = struct.pack("<IIQ", kind, 0, sector)
    chain = []
    if split == 0:
        chain.append((driver.alloc(16, header), 16, False))
    elif split == 1:
        chain += [(driver.alloc(8, header[:8]), 8, False), (driver.alloc(8, header[8:]), 8, False)]
    else:
        chain.append((driver.alloc(12, header[:12]), 12, False))
    if direction == 2:
        chain.append((driver.alloc(16, segment), 16, False))
    writable_data = []
    for i, length in enumerate(buffers):
        fill = bytes((salt + i + j) & 0xFF for j in range(length))
        writable = direction == 1 or (direction == 3 and i % 2 == 1)
        address = driver.alloc(length, fill)
        chain.append((address, length, writable))
        if writable:
            writable_data.append((address, length))
    # readable ones first: a writable one in the middle is the driver's error, not ours
    chain.sort(key=lambda buffer: buffer[2])
    status = driver.alloc(max(status_length, 1), b"\xee" * max(status_length, 1))
    if status_length:
        chain.append((status, status_length, True))
    driver.add_chain(chain)
    return writable_data, status + max(status_length, 1) - 1


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(_request, min_size=1, max_size=6), readonly=st.booleans())
def test_the_c_loop_answers_as_the_python_executor(tmp_path_factory, requests, readonly) -> None:
    """Every request, valid or not, gets the same status byte, used length, guest bytes
    and image bytes from the C loop as from the Python executor."""
    directory = tmp_path_factory.mktemp("compare")
    results = []
    for disk_class in (DiskImage, _ServedInPython):
        path = directory / f"{disk_class.__name__}.img"
        path.write_bytes(bytes(range(256)) * (SECTORS * 2))
        memory = GuestMemory.from_bytes(RAM)
        device = BlockDevice(disk_class(str(path), readonly=readonly), serial="s" * 25)
        assert (device._loop is None) == (disk_class is _ServedInPython)
        driver = DriverQueue(memory, 0x10000, size=16)
        driver.configure(device.queues[0])
        device.activate(memory, COMMON_FEATURES, lambda: None)
        seen = []
        for salt, request in enumerate(requests):
            writable, status = _submit(driver, memory, request, salt)
            device.process_queue(0)
            seen.append((driver.take_used(), memory.read_u8(status),
                         [memory.read(address, length) for address, length in writable]))
        device.shutdown()
        results.append((seen, path.read_bytes()))
    assert results[0] == results[1]
