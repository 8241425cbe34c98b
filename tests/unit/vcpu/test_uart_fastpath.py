"""The UART fast path: its ring handling and mode switches over a ring in plain memory,
and the registers' C side against the Python reference (the register tests in
tests/unit/devices/test_serial.py run against both too)."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import Any

import pytest

from pyvmm.devices import serial as uart
from pyvmm.devices.serial import Serial
from pyvmm.errors import KvmError
from pyvmm.vcpu._uart_cffi import ffi, lib
from pyvmm.vcpu.uart_fastpath import (COALESCE_AFTER, RING_POLL_SECONDS, STATE_FIELDS,
                                      UartFastPath, UartRegistersInC, wanted_halves)

from tests.unit.devices.conftest import FakeLine, SerialWithC, rd

SLOTS = (mmap.PAGESIZE - ffi.sizeof("struct kvm_coalesced_mmio_ring")) \
    // ffi.sizeof("struct kvm_coalesced_mmio")


class FakeRing:
    """KVM's producer side of the coalesced ring, in a page we own."""

    def __init__(self) -> None:
        self.page = ffi.new("char[]", mmap.PAGESIZE)
        self.ring = ffi.cast("struct kvm_coalesced_mmio_ring *", self.page)
        self.entries = ffi.cast("struct kvm_coalesced_mmio *",
                                self.page + ffi.sizeof("struct kvm_coalesced_mmio_ring"))

    def put(self, port: int, data: bytes) -> None:
        for value in data:
            slot = self.entries[self.ring.last]
            slot.phys_addr, slot.len, slot.pio, slot.data[0] = port, 1, 1, value
            self.ring.last = (self.ring.last + 1) % SLOTS
            assert self.ring.last != self.ring.first, "ring full"


class FakeKvm:
    def has_coalesced_pio(self) -> bool:
        return True


class FakeVm:
    fd = -1  # no line is driven: the C side counts the changes

    def __init__(self) -> None:
        self.zones: list[tuple[int, int, bool]] = []

    def coalesce_pio(self, port: int, length: int, on: bool = True) -> None:
        self.zones.append((port, length, on))


class FakeVcpu:
    """What the fast path takes from the KVM binding's vCPU: fd and addresses."""

    id = 0
    fd = -1  # KVM_RUN on it fails at once: EBADF
    run_address = 0

    def __init__(self, ring: FakeRing) -> None:
        self._ring = ring
        self.finished: list[int] = []

    def coalesced_ring_address(self) -> int:
        return int(ffi.cast("uintptr_t", self._ring.page))

    def finish_run(self, ret: int) -> str:
        self.finished.append(ret)
        return "exit"


def make(setting: str = "on"):
    out = bytearray()
    device = Serial(FakeLine(), out.extend)
    ring, vm = FakeRing(), FakeVm()
    fast = UartFastPath(FakeKvm(), vm, [FakeVcpu(ring)],  # type: ignore[arg-type, list-item]
                        device, 0x3F8, 4, setting)
    return fast, device, ring, vm, out


def test_the_ring_is_the_one_the_vcpu_maps() -> None:
    fast, _, ring, _, _ = make()
    assert fast._ring == ring.ring


def test_the_c_loop_runs_the_vcpu_fd_and_hands_its_result_back() -> None:
    fast, _, ring, _, _ = make()
    vcpu: Any = FakeVcpu(ring)
    assert fast.run(vcpu) == "exit"
    assert vcpu.finished == [-errno.EBADF]  # from KVM_RUN on fd -1, in C
    assert fast.served_in_c(vcpu) == {}
    fast._fast[0].served_in[uart.LSR] = 7
    fast._fast[0].served_out[uart.RBR_THR_DLL] = 9
    assert fast.served_in_c(vcpu) == {("pio-in-c", 0x3FD): 7, ("pio-out-c", 0x3F8): 9}
    fast, _, ring, _, _ = make("coalesce")  # the C loop is off: no block for any vCPU
    assert fast.served_in_c(vcpu) == {} and fast.registers is None


def test_thr_is_coalesced_while_polled_and_drained_in_order() -> None:
    fast, device, ring, vm, out = make()
    assert vm.zones == [(0x3F8, 1, True)] and fast.coalescing
    ring.put(0x3F8, b"Linux version 6.1\r\n")
    ring.put(0x3F8, b"partial")
    fast.drain_pending()
    assert out.startswith(b"Linux version 6.1\r\n")  # the newline sends the batch
    device.flush()
    assert out == b"Linux version 6.1\r\npartial"
    assert fast.coalesced_writes == len(b"Linux version 6.1\r\npartial")
    assert ring.ring.first == ring.ring.last


def test_the_ring_wraps_around() -> None:
    fast, device, ring, _, out = make()
    expected = bytearray()
    for round_ in range(5):  # 5 x 100 entries through a ring of SLOTS
        data = bytes((round_ * 100 + i) % 256 for i in range(100))
        ring.put(0x3F8, data)
        expected += data
        fast.drain()
    device.flush()
    assert out == expected and SLOTS < 500


@pytest.mark.parametrize("setting", ["on", "coalesce"])
def test_thre_interrupt_stops_coalescing_after_draining_what_came_before(setting: str) -> None:
    fast, device, ring, vm, out = make(setting)
    ring.put(0x3F8, b"before\n")
    # The IER write exits; the vCPU loop drains first, then the UART switches mode.
    fast.drain_pending()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    assert vm.zones[-1] == (0x3F8, 1, False) and not fast.coalescing
    assert out == b"before\n"
    device.write(uart.IER_DLM, b"\x00")
    if setting == "coalesce":  # no C side: polled again, coalesced again at once
        assert vm.zones[-1] == (0x3F8, 1, True) and fast.coalescing
    else:  # the C side serves polled writes until they flow (the next test)
        assert vm.zones[-1] == (0x3F8, 1, False) and not fast.coalescing


def test_a_mode_switch_applies_what_the_ring_still_holds_first() -> None:
    fast, device, ring, _, out = make()
    ring.put(0x3F8, b"queued")  # e.g. from another vCPU
    device.write(uart.MCR, bytes([uart.MCR_LOOP]))
    device.flush()
    assert out == b"queued"  # sent under the old mode, not looped back
    assert not device.input_room() < uart.INPUT_CAPACITY


def test_halves_can_be_turned_off() -> None:
    assert wanted_halves(None) == (True, True)
    assert wanted_halves("off") == (False, False)
    assert wanted_halves("coalesce") == (True, False)
    assert wanted_halves("c") == (False, True)
    out = bytearray()
    device = Serial(FakeLine(), out.extend)
    vm = FakeVm()
    fast = UartFastPath(FakeKvm(), vm, [FakeVcpu(FakeRing())], device, 0x3F8,  # type: ignore[arg-type, list-item]
                        4, "off")
    assert vm.zones == [] and not fast.coalescing


def test_the_ring_is_polled_less_often_while_it_stays_empty() -> None:
    fast, device, ring, _, out = make()
    waits = [fast.poll() for _ in range(6)]
    assert waits == [0.04, 0.08, 0.16, 0.32, 0.32, 0.32]
    ring.put(0x3F8, b"login: ")  # a prompt: no newline, no exit to drain it
    assert fast.poll() == RING_POLL_SECONDS
    device.flush()
    assert out == b"login: "
    assert fast.poll() == 2 * RING_POLL_SECONDS


# -- the registers' C side ------------------------------------------------------------


def test_the_c_state_is_laid_out_as_the_serials() -> None:
    assert ffi.sizeof("pyvmm_uart_state") == uart.STATE_BYTES
    assert {name: ffi.offsetof("pyvmm_uart_state", name) for name in STATE_FIELDS} \
        == STATE_FIELDS
    assert set(STATE_FIELDS.values()) == {value for name, value in vars(uart).items()
                                          if name.startswith("ST_")}


def fast_io(fast: UartFastPath, port: int, write: bool, value: int = 0) -> int | None:
    """What the C loop does with a 1-byte access exit: the value, or None (to Python)."""
    byte = ffi.new("__u8 *", value)
    code = lib.pyvmm_uart_fast_io(fast._fast[0], port, int(write), byte)
    if code == lib.PYVMM_UART_COALESCE:  # served; the loop returns and Python does this
        fast._set_coalescing(True)
    return int(byte[0]) if code else None


def test_interrupt_driven_output_is_served_in_c() -> None:
    """Linux's 8250 transmitting from user space: after the first switch, nothing reaches
    Python; polled output that flows afterwards gets coalesced again."""
    fast, device, ring, vm, out = make()
    assert fast.coalescing  # polled at reset (printk's console)
    assert fast_io(fast, 0x3F9, True, uart.IER_RX_DATA | uart.IER_THR_EMPTY) is None
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_THR_EMPTY]))  # start_tx
    assert vm.zones[-1] == (0x3F8, 1, False)  # THR writes exit again, to C
    assert device.state[uart.ST_IRQ] == 1
    text = b"systemd[1]: Started Getty on tty1.\n" * 3
    for burst in range(2):
        if burst:  # start_tx again: coalescing is off, so C serves it
            assert fast_io(fast, 0x3F9, True, uart.IER_RX_DATA | uart.IER_THR_EMPTY) \
                == uart.IER_RX_DATA | uart.IER_THR_EMPTY
            assert device.state[uart.ST_IRQ] == 1
        for start in range(0, len(text), 16):  # one interrupt per 16 bytes
            assert fast_io(fast, 0x3FA, False) == uart.IIR_THR_EMPTY
            assert device.state[uart.ST_IRQ] == 0  # acknowledged
            assert fast_io(fast, 0x3FD, False) == uart.LSR_THR_EMPTY | uart.LSR_TRANSMITTER_EMPTY
            assert fast_io(fast, 0x3FE, False) == uart.MSR_CONNECTED
            for byte in text[start:start + 16]:
                assert fast_io(fast, 0x3F8, True, byte) == byte
            assert device.state[uart.ST_IRQ] == 1  # THR empty again
        assert fast_io(fast, 0x3F9, True, uart.IER_RX_DATA) == uart.IER_RX_DATA  # stop_tx
        assert fast_io(fast, 0x3FA, False) == uart.IIR_NO_INTERRUPT
        assert device.state[uart.ST_IRQ] == 0
    device.flush()
    assert out == text * 2 and vm.zones == [(0x3F8, 1, True), (0x3F8, 1, False)]
    served = fast.served_in_c(FakeVcpu(ring))  # type: ignore[arg-type]
    assert served[("pio-out-c", 0x3F8)] == 2 * len(text)
    assert served[("pio-in-c", 0x3FA)] == 16 and served[("pio-in-c", 0x3FD)] == 14
    # printk's polled console: served in C for a while, then coalesced again.
    for index in range(COALESCE_AFTER):
        assert fast_io(fast, 0x3FD, False) is not None
        assert fast_io(fast, 0x3F8, True, ord("k")) == ord("k")
        assert fast.coalescing == (index == COALESCE_AFTER - 1)
    assert vm.zones[-1] == (0x3F8, 1, True)
    device.flush()
    assert out == text * 2 + b"k" * COALESCE_AFTER


def test_a_typed_line_is_read_in_c() -> None:
    """Linux's 8250 receiving a line: per byte an LSR and an RBR read, none in Python; the
    RX interrupt falls with the last byte, and the divisor latch stays Python's."""
    fast, device, ring, _, _ = make()
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA | uart.IER_LINE_STATUS]))
    line = b"echo r$((6*7))\n"
    assert device.enqueue_input(line) == len(line)
    assert device.state[uart.ST_IRQ] == 1
    assert fast_io(fast, 0x3FA, False) == uart.IIR_RX_DATA
    typed = bytearray()
    while fast_io(fast, 0x3FD, False) & uart.LSR_DATA_READY:  # type: ignore[operator]
        typed.append(fast_io(fast, 0x3F8, False))  # type: ignore[arg-type]
    assert typed == line and device.state[uart.ST_IRQ] == 0
    assert fast_io(fast, 0x3F8, False) == 0  # nothing waits: 0, as the reference reads
    served = fast.served_in_c(FakeVcpu(ring))  # type: ignore[arg-type]
    assert served[("pio-in-c", 0x3F8)] == len(line) + 1
    assert device.input_room() == uart.INPUT_CAPACITY
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))
    assert fast_io(fast, 0x3F8, False) is None


def test_the_loop_leaves_thr_to_python_while_the_ring_holds_older_writes() -> None:
    fast, device, ring, _, out = make()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    ring.put(0x3F8, b"old ")  # written (by another vCPU) before coalescing stopped
    assert fast_io(fast, 0x3F8, True, ord("n")) is None
    fast.drain_pending()  # what the vCPU thread does before serving it in Python
    device.write(uart.RBR_THR_DLL, b"n")
    assert fast_io(fast, 0x3F8, True, ord("\n")) == ord("\n")
    device.flush()
    assert out == b"old n\n"


def test_an_lsr_read_after_a_coalesced_newline_wakes_the_loop_once() -> None:
    """A polled line is complete in the ring: the event loop drains it and writes it out
    (the pump's tick); with no loop to wake, the loop leaves the read to Python."""
    fast, device, ring, _, out = make()
    ring.put(0x3F8, b"line\n")
    assert fast_io(fast, 0x3FD, False) is None  # no wake-up fd: Python drains now
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        fast.wake_on_output(fd)
        ring.put(0x3F8, b"two")
        assert fast_io(fast, 0x3FD, False) is not None
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        ring.put(0x3F8, b"\n")
        for _ in range(3):  # printk polls LSR again at the end of its message
            assert fast_io(fast, 0x3FD, False) == uart.LSR_THR_EMPTY | uart.LSR_TRANSMITTER_EMPTY
        assert os.eventfd_read(fd) == 1
        fast.poll()  # what the woken loop's tick does
        assert out == b"line\ntwo\n"
        assert fast_io(fast, 0x2FD, False) is None  # another port: never served
    finally:
        fast.close()
        os.close(fd)


def test_a_full_buffer_goes_to_python_which_flushes_it_first() -> None:
    chunks: list[bytes] = []
    device = Serial(FakeLine(), chunks.append)
    c = UartRegistersInC(device, -1, 4)
    for _ in range(uart.TX_BUFFER_BYTES):
        assert c.access(uart.RBR_THR_DLL, True, ord("c")) is not None
    assert c.access(uart.RBR_THR_DLL, True, ord("p")) is None  # full: a slow stdout waits here
    device.write(uart.RBR_THR_DLL, b"p")
    assert chunks == [b"c" * uart.TX_BUFFER_BYTES]
    device.flush()
    assert chunks[-1] == b"p"


def test_c_wakes_the_loop_when_output_starts_and_at_each_newline() -> None:
    device = Serial(FakeLine(), bytearray().extend)
    c = UartRegistersInC(device, -1, 4)
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        c.wake_on_output(fd)
        for byte in b"$ ls\nREADME\n":
            c.access(uart.RBR_THR_DLL, True, byte)
        assert os.eventfd_read(fd) == 3
        assert device.flush_due() == uart.TX_FLUSH_DELAY  # a newline waits: out now
        assert device.state[uart.ST_TX_LEN] == 0
        c.close()
        c.access(uart.RBR_THR_DLL, True, ord("x"))
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
    finally:
        os.close(fd)


def test_a_line_that_fails_is_an_error_on_either_side() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    try:
        device = Serial(FakeLine(), bytearray().extend)
        c = UartRegistersInC(device, null, 4)  # KVM_IRQ_LINE on /dev/null: ENOTTY
        with pytest.raises(KvmError, match="KVM_IRQ_LINE"):
            device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
        assert c.access(uart.IIR_FCR, False) == uart.IIR_THR_EMPTY  # the line drops: fails
        assert c.block.irq_errno == errno.ENOTTY
    finally:
        os.close(null)


def test_both_sides_appending_at_once_keep_each_ones_order() -> None:
    """A vCPU in C and Python (another vCPU, the ring's drain) share the lock and ``tx``."""
    out = bytearray()
    device = Serial(FakeLine(), out.extend)
    c = UartRegistersInC(device, -1, 4)
    count = 20000

    def in_c() -> None:
        for index in range(count):
            while c.access(uart.RBR_THR_DLL, True, ord("a") + index % 2) is None:
                device.flush()  # full: what the Python path would do
    thread = threading.Thread(target=in_c)
    thread.start()
    for index in range(count):
        device.transmit(bytes([ord("0") + index % 2]))
    thread.join()
    device.flush()
    assert len(out) == 2 * count
    assert out.translate(None, b"01") == b"ab" * (count // 2)
    assert out.translate(None, b"ab") == b"01" * (count // 2)


def test_any_access_sequence_behaves_the_same_in_c_and_in_python() -> None:
    """The reference and the C side in front of it: same reads, line, output, state."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    # Values that matter: the IER/MCR/LCR bits, newlines, and anything else.
    values = st.one_of(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x0A, 0x0F, 0x10, 0x80,
                                        0x83, 0x1B, 0x0B]), st.integers(0, 255))
    steps = st.lists(st.one_of(
        st.tuples(st.just("read"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("write"), st.integers(0, 7), values),
        st.tuples(st.just("input"), st.integers(1, 3), st.just(0)),
        st.tuples(st.just("flush"), st.just(0), st.just(0))), max_size=120)

    @settings(max_examples=300, deadline=None)
    @given(steps, st.booleans())
    def check(script: list[tuple[str, int, int]], watched: bool) -> None:
        runs = []
        for device_type in ("python", "c"):
            line, out = FakeLine(), bytearray()
            device: Any = Serial(line, out.extend) if device_type == "python" \
                else SerialWithC(line, out.extend)
            if watched:  # an owner that coalesces while polled: THRI on is Python's then
                device.on_tx_polled = lambda polled: None
            reads: list[int | bytes] = []  # each read's value, and the output after each step
            for kind, offset, value in script:
                if kind == "read":
                    reads.append(rd(device, offset))
                elif kind == "write":
                    device.write(offset, bytes([value]))
                elif kind == "input":
                    device.enqueue_input(b"k" * offset)
                else:
                    device.flush()
                reads.append(bytes(out))
            device.flush()
            runs.append((reads, line.levels, bytes(out), bytes(device.state)))
        assert runs[0] == runs[1]

    check()


def test_coalescing_never_starts_while_the_thre_interrupt_is_on() -> None:
    """The C loop asked (polled writes flowed), but another vCPU turned THRI on meanwhile."""
    fast, device, _, vm, _ = make()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    zones = list(vm.zones)
    fast._set_coalescing(True)
    assert vm.zones == zones and not fast.coalescing
    assert fast.registers is not None and fast.registers.block.coalescing == 0


def test_a_thr_write_that_outran_the_drain_is_told_apart() -> None:
    """--stats counts a THR write as pio-out-full only when it reached Python because the
    guest's output outran its drain.  With the C side, as the C loop saw it: THR writes
    coalesced (one exits only when KVM's ring is full, though the event loop may empty
    the ring before the loop looks), the ring holding writes, or ``tx`` full (though the
    event loop may flush it before the vCPU thread looks)."""
    fast, device, ring, _, _ = make()
    vcpu: Any = FakeVcpu(ring)
    assert fast.coalescing and fast_io(fast, 0x3F8, True, ord("a")) is None
    assert fast.outran(vcpu, False)
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))  # THR writes exit again
    assert fast_io(fast, 0x3F8, True, ord("b")) == ord("b") and not fast.outran(vcpu, False)
    ring.put(0x3F8, b"c")  # written (by another vCPU) before coalescing stopped
    assert fast_io(fast, 0x3F8, True, ord("d")) is None and fast.outran(vcpu, False)
    fast.drain()
    device._tx_len[0] = len(device.tx)  # as the C side leaves it when the loop is slow
    assert fast_io(fast, 0x3F8, True, ord("e")) is None
    device.flush()  # the event loop's, before the vCPU thread counts the exit
    assert not device.tx_is_full() and fast.outran(vcpu, False)
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))  # the divisor latch is Python's
    assert fast_io(fast, 0x3F8, True, 1) is None and not fast.outran(vcpu, False)
    coalesce_only, device, ring, _, _ = make("coalesce")
    vcpu = FakeVcpu(ring)
    assert coalesce_only.coalescing and coalesce_only.outran(vcpu, False)
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    device._tx_len[0] = len(device.tx)
    assert not coalesce_only.outran(vcpu, False)  # without the C side every THR write exits
    assert coalesce_only.outran(vcpu, True)  # drain_pending found the ring holding writes


def test_while_coalescing_the_loop_leaves_a_thr_write_that_exits_to_python() -> None:
    """KVM lets a coalesced write exit only when its ring is full: Python's (it drains the
    ring first), even when the event loop emptied the ring before the loop looked."""
    fast, _, ring, _, _ = make()
    assert fast.coalescing and ring.ring.first == ring.ring.last
    assert fast_io(fast, 0x3F8, True, ord("x")) is None
    assert fast.served_in_c(FakeVcpu(ring)) == {}  # type: ignore[arg-type]


def test_the_c_loop_writes_thr_after_the_bytes_a_drain_is_applying() -> None:
    """The ring's slots are freed only once their bytes are the UART's: a THR write the
    C loop sees meanwhile is left to Python, not put in ``tx`` before them."""
    fast, device, ring, _, out = make()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))  # THR writes served in C
    ring.put(0x3F8, b"older\n")  # queued (by another vCPU) before coalescing stopped
    seen: list[int | None] = []
    transmit = device.transmit

    def transmit_while_a_vcpu_writes(data: bytes | memoryview) -> None:
        seen.append(fast_io(fast, 0x3F8, True, ord("n")))
        transmit(data)

    device.transmit = transmit_while_a_vcpu_writes  # type: ignore[method-assign]
    fast.drain()
    device.transmit = transmit  # type: ignore[method-assign]
    assert seen == [None]
    device.write(uart.RBR_THR_DLL, b"n")  # Python serves it, after the drain
    device.flush()
    assert out == b"older\nn"


def test_a_vcpu_thread_waits_for_the_bytes_another_thread_is_draining() -> None:
    """A THR write exits while the event loop drains the ring: the vCPU thread finds the
    ring still holding what is on its way to the UART, waits, then serves its write."""
    fast, device, ring, _, out = make()
    ring.put(0x3F8, b"older\n")
    transmitting, go = threading.Event(), threading.Event()
    transmit = device.transmit

    def slow_transmit(data: bytes | memoryview) -> None:
        if not transmitting.is_set():  # the drain's batch
            transmitting.set()
            go.wait(5)
        transmit(data)

    device.transmit = slow_transmit  # type: ignore[method-assign]
    event_loop = threading.Thread(target=fast.drain)
    event_loop.start()
    assert transmitting.wait(5)
    held: list[bool] = []

    def serve_the_exit() -> None:  # what ServedVcpu.run and serve do
        held.append(fast.drain_pending())
        device.write(uart.RBR_THR_DLL, b"n")

    vcpu = threading.Thread(target=serve_the_exit)
    vcpu.start()
    vcpu.join(0.2)  # had it found the ring empty, its byte would be out first by now
    go.set()
    event_loop.join(5)
    vcpu.join(5)
    assert not event_loop.is_alive() and not vcpu.is_alive()
    device.flush()
    assert out == b"older\nn" and held == [True]
