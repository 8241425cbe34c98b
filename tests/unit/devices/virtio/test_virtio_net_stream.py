"""virtio-net over passt's stream, the frames moved by the C half (``_stream_build.py``):
the mock driver on one side, a fake passt on a socketpair on the other; and the
serving thread with its kick and call eventfds, as the machine wires them."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

import pytest

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.net import (HDR_F_DATA_VALID, HEADER, RECEIVE_QUEUE, TRANSMIT_QUEUE,
                                      VIRTIO_NET_F_GUEST_CSUM, NetDevice)
from pyvmm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pyvmm.vhost.stream import FrameStream, c_module
from tests.unit.devices.virtio.test_virtio_block_loop import CountingPulse
from tests.unit.devices.virtio.test_virtio_net import MAC, Guest, frame


class Passt:
    """The peer end of the socketpair: frames framed as QEMU's stream protocol."""

    def __init__(self, mtu: int = 1500) -> None:
        ours, self.sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stream = FrameStream(ours)
        self.device = NetDevice(self.stream, MAC, mtu)
        self._input = b""

    def give(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))

    def taken(self) -> list[bytes]:
        self.sock.setblocking(False)
        try:
            while True:
                self._input += self.sock.recv(1 << 20)
        except BlockingIOError:
            pass
        frames = []
        while len(self._input) >= 4:
            length = struct.unpack_from(">I", self._input)[0]
            if len(self._input) < 4 + length:
                break
            frames.append(self._input[4:4 + length])
            self._input = self._input[4 + length:]
        return frames

    def arrived(self) -> bool:
        """What the machine's loop does when the socket is readable."""
        self.stream.fill()
        return self.device.frames_arrived()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def passt():
    peer = Passt()
    yield peer
    peer.close()


@pytest.fixture
def served(passt):
    """``passt`` with the eventfds bound as the machine binds them: (kicks, call), so the
    serving thread starts when the driver does."""
    kicks = passt.device.kick_fds
    call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    passt.device.call_fd = call
    yield kicks, call
    for fd in kicks + [call]:
        os.close(fd)


def test_transmit_gathers_frames_and_counts_bad_ones(passt) -> None:
    guest = Guest(device=passt.device)
    guest.transmit(frame(60, 1))
    guest.transmit(frame(1514, 2), split=5)                           # header split
    guest.transmit(frame(1500 + 18 + 1))                              # over MTU + headers
    guest.transmit(b"", header=bytes(5))                              # shorter than a header
    guest.transmit(frame(60), header=HEADER.pack(0, 1, 0, 0, 0, 0, 0))  # GSO never offered
    assert passt.taken() == [frame(60, 1), frame(1514, 2)]
    counts = passt.device.frame_counts
    assert (counts["tx_frames"], counts["tx_oversize"], counts["tx_bad_header"]) == (2, 1, 2)
    assert [length for _, length in guest.tx.take_used()] == [0] * 5
    assert guest.interrupts.count >= 1 and not guest.status & mmio.STATUS_NEEDS_RESET


def test_many_chains_go_in_one_pass(passt) -> None:
    guest = Guest(device=passt.device, size=64)
    for n in range(50):  # made available without notifying, then one notify
        data = bytes(HEADER.size) + frame(100, n)
        guest.tx.add_chain([(guest.tx.alloc(len(data), data), len(data), False)])
    guest.transport.notify(TRANSMIT_QUEUE)
    assert passt.taken() == [frame(100, n) for n in range(50)]
    assert guest.tx.used_index() == 50


def _scattered(guest: Guest, data: bytes, pieces: int) -> None:
    """One transmit chain of ``data`` in ``pieces`` buffers (an indirect table), no notify."""
    step = -(-len(data) // pieces)
    buffers = [(guest.tx.alloc(len(part), part), len(part), False)
               for part in (data[at:at + step] for at in range(0, len(data), step))]
    guest.tx.add_chain(buffers, indirect=True)


def test_frames_go_straight_from_guest_ram_and_what_the_socket_refuses_waits(passt) -> None:
    """A pass sends its frames with sendmsg from the guest's buffers; a socket that takes
    only part of them leaves the rest of the batch in the stream's output buffer (those
    chains are used: their bytes were copied) and the chains behind it on the ring,
    with nothing to do until EPOLLOUT drains it; every frame arrives, in order."""
    passt.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    passt.stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    guest = Guest(device=passt.device, size=128)
    sent = [frame(1514, n) for n in range(100)]
    for data in sent:
        _scattered(guest, bytes(HEADER.size) + data, 3)
    guest.transport.notify(TRANSMIT_QUEUE)
    assert 0 < passt.stream.held_output < 100 * 1518  # the socket took some
    assert guest.tx.used_index() < 100  # the rest wait on the ring
    assert not guest.transport.notify(TRANSMIT_QUEUE)  # nothing to do until it drains
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while len(got) < 100 and time.monotonic() < deadline:
        got += passt.taken()
        with passt.device.lock:
            passt.stream.flush()
            passt.device.link_writable()
    assert got == sent and guest.tx.used_index() == 100


def test_a_pass_with_more_buffers_than_one_sendmsg_takes(passt) -> None:
    """Chains of 200 buffers each: past sendmsg's 1024 the batch goes and the frame that
    did not fit is copied; every frame arrives whole and in order."""
    guest = Guest(device=passt.device, size=256)
    sent = [frame(1400, n) for n in range(8)]
    for data in sent:
        _scattered(guest, bytes(HEADER.size) + data, 200)
    guest.transport.notify(TRANSMIT_QUEUE)
    assert passt.taken() == sent and guest.tx.used_index() == 8


def test_receive_fills_mergeable_buffers_and_holds_back(passt) -> None:
    passt.device = NetDevice(passt.stream, MAC, 65520)
    guest = Guest(device=passt.device, mtu=65520, size=64)
    big = frame(65520 + 14, 7)
    passt.give(frame(60, 1), big, frame(100, 8))
    assert passt.arrived() is False
    assert guest.received() == []                 # no buffers: the frames wait
    guest.post_rx(20, size=1536)                  # room for the first, not the big one
    got = guest.received()
    assert [payload for _, payload in got] == [frame(60, 1)]
    assert got[0][0]["num_buffers"] == 1
    assert not passt.stream.wanted_events() & select.EPOLLIN  # back-pressure to passt
    guest.post_rx(40, size=1536)
    got = guest.received()
    assert [payload for _, payload in got] == [big, frame(100, 8)]
    assert got[0][0]["num_buffers"] == 43
    assert passt.stream.wanted_events() & select.EPOLLIN


def test_received_frames_say_their_checksums_are_valid_if_the_driver_takes_it(passt) -> None:
    """passt computed them: with GUEST_CSUM the header says DATA_VALID, without it 0."""
    guest = Guest(device=passt.device)
    assert guest.features() & 1 << VIRTIO_NET_F_GUEST_CSUM
    guest.post_rx(2)
    passt.give(frame(60, 1))
    passt.arrived()
    [(header, payload)] = guest.received()
    assert header["flags"] == HDR_F_DATA_VALID and payload == frame(60, 1)
    other = Passt()
    try:
        guest = Guest(device=other.device, refused=1 << VIRTIO_NET_F_GUEST_CSUM)
        guest.post_rx(2)
        other.give(frame(60, 2))
        other.arrived()
        assert [header["flags"] for header, _ in guest.received()] == [0]
    finally:
        other.close()


def _kicks(queue, avail_before: int, avail_now: int) -> bool:
    """Whether a driver that added buffers from ``avail_before`` to ``avail_now`` notifies
    (EVENT_IDX: vring_need_event with the device's avail_event)."""
    event = queue.avail_event()
    return (avail_now - event - 1) & 0xFFFF < (avail_now - avail_before) & 0xFFFF


def _refill(guest: Guest) -> bool:
    """One receive buffer added without a notify, as Linux's refill does: whether the
    driver would have notified it."""
    before = guest.rx._avail_idx
    address = guest.rx.alloc(2048)
    guest.rx_buffers[guest.rx.add_chain([(address, 2048, True)])] = (address, 2048)
    return _kicks(guest.rx, before, guest.rx._avail_idx)


def test_receive_buffers_are_notified_only_while_a_frame_waits_for_them(passt) -> None:
    """The driver refills its receive ring after every frame: with buffers left, those
    refills wake nobody (the socket brings the next frame); once a frame waits for room,
    the next buffer is notified."""
    guest = Guest(device=passt.device, mtu=1500, size=64)
    guest.post_rx(4)
    for n in range(3):
        passt.give(frame(60, n))
        passt.arrived()
        assert not _refill(guest)
    passt.give(*[frame(1514, n) for n in range(12)])  # more than the 4 buffers left
    passt.arrived()
    assert len(guest.received()) == 3 + 4
    assert _refill(guest)
    guest.transport.notify(RECEIVE_QUEUE)
    assert [payload for _, payload in guest.received()] == [frame(1514, 4)]


def test_a_pass_that_ends_with_frames_and_no_buffers_asks_for_the_next_one(passt) -> None:
    """A pass stops after a ring's worth of frames: if that emptied the ring, the frames
    left wait for a notification of the next buffer (the socket no longer wakes us)."""
    guest = Guest(device=passt.device, size=16)
    guest.post_rx(16)
    passt.give(*[frame(60, n) for n in range(20)])
    passt.arrived()
    assert len(guest.received()) == 16
    assert not passt.stream.wanted_events() & select.EPOLLIN
    assert _refill(guest)


def test_a_frame_that_arrives_in_pieces_is_delivered_whole(passt) -> None:
    """A read that ends inside a frame ends the pass (the socket was empty); the rest,
    when it comes, completes it, and the frames behind it follow."""
    guest = Guest(device=passt.device)
    guest.post_rx(4)
    data = b"".join(struct.pack(">I", len(f)) + f for f in (frame(1000, 1), frame(60, 2)))
    for start, end in ((0, 2), (2, 700), (700, len(data))):
        passt.sock.sendall(data[start:end])
        passt.arrived()
        if end < 1004:
            assert guest.received() == []
    assert [payload for _, payload in guest.received()] == [frame(1000, 1), frame(60, 2)]


def test_receive_header_split_over_tiny_buffers(passt) -> None:
    guest = Guest(device=passt.device)
    passt.give(frame(60, 3))
    for size in (5, 5, 100):  # num_buffers lands in the third one
        address = guest.rx.alloc(size)
        guest.rx_buffers[guest.rx.add_chain([(address, size, True)])] = (address, size)
    guest.transport.notify(RECEIVE_QUEUE)
    passt.arrived()
    data = b"".join(guest.memory.read(guest.rx_buffers[head][0], length)
                    for head, length in guest.rx.take_used())
    assert HEADER.unpack_from(data)[-1] == 3 and data[HEADER.size:] == frame(60, 3)


def test_frames_over_the_size_are_dropped_and_counted(passt) -> None:
    guest = Guest(device=passt.device)
    guest.post_rx(4)
    passt.give(frame(1500 + 18 + 1), frame(60, 3))
    passt.arrived()
    assert [payload for _, payload in guest.received()] == [frame(60, 3)]
    assert passt.device.frame_counts["rx_oversize"] == 1


def test_a_descriptor_outside_guest_ram_needs_a_reset(passt) -> None:
    guest = Guest(device=passt.device)
    guest.rx.add_chain([(guest.memory.total_size - 16, 64, True)])
    passt.give(frame(60))
    passt.arrived()
    assert guest.status & mmio.STATUS_NEEDS_RESET


def test_a_looping_transmit_chain_needs_a_reset(passt) -> None:
    guest = Guest(device=passt.device)
    guest.tx.write_descriptor(0, 0x400000, 64, VIRTQ_DESC_F_NEXT, 1)
    guest.tx.write_descriptor(1, 0x400100, 64, VIRTQ_DESC_F_NEXT, 0)
    guest.tx.make_available(0)
    guest.transport.notify(TRANSMIT_QUEUE)
    assert guest.status & mmio.STATUS_NEEDS_RESET
    assert passt.taken() == []


def test_a_readable_buffer_after_a_writable_one_needs_a_reset(passt) -> None:
    guest = Guest(device=passt.device)
    guest.rx.add_chain([(guest.rx.alloc(64), 64, True), (guest.rx.alloc(64), 64, False)])
    guest.transport.notify(RECEIVE_QUEUE)
    passt.give(frame(60))
    passt.arrived()
    assert guest.status & mmio.STATUS_NEEDS_RESET


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_the_serving_thread_moves_frames_both_ways(passt, served) -> None:
    """As the machine wires it: kicks on eventfds, the interrupt an eventfd write."""
    kicks, call = served
    guest = Guest(device=passt.device, size=64)
    assert passt.device.backend_interrupts and passt.stream.wanted_events() == 0
    guest.post_rx(8)  # QUEUE_NOTIFY: passed on to the thread's kick eventfd
    passt.give(*[frame(60, n) for n in range(5)])
    wait_for(lambda: guest.rx.used_index() == 5)
    assert [payload for _, payload in guest.received()] == [frame(60, n) for n in range(5)]
    wait_for(lambda: os.eventfd_read(call) > 0 if select.select([call], [], [], 0)[0]
             else False)
    for n in range(3):
        data = bytes(HEADER.size) + frame(200, n)
        guest.tx.add_chain([(guest.tx.alloc(len(data), data), len(data), False)])
    os.eventfd_write(kicks[TRANSMIT_QUEUE], 1)  # what KVM's ioeventfd does
    got: list[bytes] = []

    def three_taken() -> bool:
        got.extend(passt.taken())
        return len(got) == 3
    wait_for(three_taken)
    assert got == [frame(200, n) for n in range(3)]
    guest.write(mmio.STATUS, 0)  # reset: the thread stops, the loop serves again
    assert passt.device._thread is None and passt.stream.wanted_events() & select.EPOLLIN


def test_each_kick_wakes_the_thread_though_it_never_reads_the_kick_back(passt, served) -> None:
    """The kicks are watched edge-triggered: every write of KVM's ioeventfd is a wake-up,
    and the thread spends no read(2) on the counter, which only grows."""
    kicks, _ = served
    guest = Guest(device=passt.device, size=64)
    guest.post_rx(8)
    for n in range(3):
        data = bytes(HEADER.size) + frame(100, n)
        guest.tx.add_chain([(guest.tx.alloc(len(data), data), len(data), False)])
        os.eventfd_write(kicks[TRANSMIT_QUEUE], 1)
        wait_for(lambda: guest.tx.used_index() == n + 1)
        assert passt.taken() == [frame(100, n)]
    assert os.eventfd_read(kicks[TRANSMIT_QUEUE]) >= 3  # (and the notifies of set-up)


def test_a_transmit_interrupt_is_held_for_the_answer_but_never_lost(passt, served) -> None:
    """The thread holds a transmit completion's interrupt for the receive interrupt that
    follows (one interrupt for the round trip), and raises it alone when no answer comes."""
    kicks, call = served
    guest = Guest(device=passt.device, size=64)
    guest.post_rx(8)

    def send(n: int) -> None:
        data = bytes(HEADER.size) + frame(200, n)
        guest.tx.add_chain([(guest.tx.alloc(len(data), data), len(data), False)])
        os.eventfd_write(kicks[TRANSMIT_QUEUE], 1)

    def signalled() -> bool:
        return bool(select.select([call], [], [], 0)[0]) and os.eventfd_read(call) > 0

    wait_for(lambda: passt.device._pump is not None and passt.device._pump.c.wakeups > 0)
    send(0)  # no answer: the held interrupt comes alone, within the hold
    started = time.monotonic()
    wait_for(lambda: bool(passt.taken()))
    wait_for(signalled)
    assert time.monotonic() - started < 1.0
    assert guest.tx.used_index() == 1
    pump = passt.device._pump
    pump.c.tx_irq_hold_ns = 10 ** 10  # held until the answer, however slow the test is
    before = pump.c.interrupts
    guest.tx.set_used_event(1)  # Linux's driver asks to hear of each transmit
    send(1)
    wait_for(lambda: bool(passt.taken()))
    time.sleep(0.05)
    assert not signalled() and guest.tx.used_index() == 2  # used at once, not signalled
    passt.give(frame(60, 1))  # the answer carries the held interrupt
    wait_for(lambda: guest.rx.used_index() == 1)
    wait_for(signalled)
    assert (pump.c.interrupts - before, pump.c.tx_irqs_merged) == (1, 1)


def test_the_thread_interrupts_through_the_machines_pulse_and_falls_back_to_the_eventfd(
        passt, served) -> None:
    """Given the machine's pulse (KVM_IRQ_LINE in the machine), the thread calls it with
    its context instead of signalling the call eventfd; when the pulse fails, the
    eventfd carries the interrupt and the failure is counted."""
    _, call = served
    pulse = CountingPulse(c_module()[0])
    passt.device.interrupt_pulse = pulse.addresses
    guest = Guest(device=passt.device, size=64)
    try:
        guest.post_rx(8)
        passt.give(frame(60, 0))
        wait_for(lambda: guest.rx.used_index() == 1 and pulse.calls == 1)
        assert pulse.contexts == {pulse.context}
        assert not select.select([call], [], [], 0.05)[0]  # the eventfd stayed quiet
        pulse.answer = -9  # failed (EBADF): the eventfd carries the next one
        guest.rx.set_used_event(1)  # the driver asks to hear of the next frame
        passt.give(frame(60, 1))
        wait_for(lambda: guest.rx.used_index() == 2)
        wait_for(lambda: bool(select.select([call], [], [], 0)[0]))
        assert pulse.calls == 2
        assert passt.device.frame_counts["interrupt_pulse_failures"] == 1
        assert [payload for _, payload in guest.received()] == [frame(60, 0), frame(60, 1)]
    finally:
        guest.write(mmio.STATUS, 0)  # reset: the thread stops before the pulse goes


def test_the_thread_reports_a_malformed_ring(passt, served) -> None:
    kicks, call = served
    guest = Guest(device=passt.device)
    guest.tx.write_descriptor(0, 0x400000, 64, VIRTQ_DESC_F_NEXT, 0)  # a loop
    guest.tx.make_available(0)
    os.eventfd_write(kicks[TRANSMIT_QUEUE], 1)
    wait_for(lambda: bool(guest.status & mmio.STATUS_NEEDS_RESET))
    guest.write(mmio.STATUS, 0)


def test_paused_for_a_snapshot_the_thread_leaves_rings_and_passt_alone(passt, served) -> None:
    """A snapshot pauses the thread: frames passt sends meanwhile wait in its socket (the
    event loop doesn't take them either), the transport sees the queues' positions as C
    left them, and on resume the waiting frames are delivered."""
    guest = Guest(device=passt.device, size=64)
    guest.post_rx(8)
    passt.give(frame(60, 0), frame(60, 1))
    wait_for(lambda: guest.rx.used_index() == 2)
    passt.device.pause_serving()
    assert passt.device._thread is None
    assert passt.device.queues[RECEIVE_QUEUE].next_used == 2  # C's, handed back
    assert passt.stream.wanted_events() == 0  # passt's socket stays the thread's
    passt.give(frame(60, 2))
    time.sleep(0.1)
    assert not passt.arrived() and guest.rx.used_index() == 2
    assert not passt.device.pending(TRANSMIT_QUEUE)
    passt.device.resume_serving()
    wait_for(lambda: guest.rx.used_index() == 3)
    assert [payload for _, payload in guest.received()][-1] == frame(60, 2)
    guest.write(mmio.STATUS, 0)  # reset after a pause: the loop serves again
    assert passt.device._thread is None and passt.stream.wanted_events() & select.EPOLLIN


def test_reset_while_paused_gives_passt_back_to_the_loop(passt, served) -> None:
    guest = Guest(device=passt.device, size=64)
    passt.device.pause_serving()
    guest.write(mmio.STATUS, 0)
    passt.device.resume_serving()  # the machine's resume after a snapshot with stop
    assert passt.device._thread is None and passt.stream.wanted_events() & select.EPOLLIN
