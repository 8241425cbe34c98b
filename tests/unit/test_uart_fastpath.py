"""The UART fast path's ring handling and mode switches, over a ring in plain memory."""

from __future__ import annotations

import errno
import mmap
from typing import Any

from pyvmm.devices import serial as uart
from pyvmm.devices.serial import Serial
from pyvmm.vcpu._uart_cffi import ffi
from pyvmm.vcpu.uart_fastpath import RING_POLL_SECONDS, UartFastPath, wanted_halves

from .test_serial import FakeLine, rd

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
                        device, 0x3F8, setting)
    return fast, device, ring, vm, out


def test_the_ring_is_the_one_the_vcpu_maps() -> None:
    fast, _, ring, _, _ = make()
    assert fast._ring == ring.ring


def test_the_c_loop_runs_the_vcpu_fd_and_hands_its_result_back() -> None:
    fast, _, ring, _, _ = make()
    vcpu: Any = FakeVcpu(ring)
    assert fast.run(vcpu) == "exit"
    assert vcpu.finished == [-errno.EBADF]  # from KVM_RUN on fd -1, in C
    assert fast.served_in_c(vcpu) == {("pio-in-c", 0x3FD): 0, ("pio-in-c", 0x3F9): 0,
                                      ("pio-out-c", 0x3F9): 0}
    fast, _, ring, _, _ = make("coalesce")  # the C loop is off: no block for any vCPU
    assert fast.served_in_c(vcpu) == {}


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


def test_thre_interrupt_stops_coalescing_after_draining_what_came_before() -> None:
    fast, device, ring, vm, out = make()
    ring.put(0x3F8, b"before\n")
    # The IER write exits; the vCPU loop drains first, then the UART switches mode.
    fast.drain_pending()
    device.write(uart.IER_DLM, bytes([uart.IER_THR_EMPTY]))
    assert vm.zones[-1] == (0x3F8, 1, False) and not fast.coalescing
    assert out == b"before\n"
    device.write(uart.IER_DLM, b"\x00")
    assert vm.zones[-1] == (0x3F8, 1, True) and fast.coalescing


def test_a_mode_switch_applies_what_the_ring_still_holds_first() -> None:
    fast, device, ring, _, out = make()
    ring.put(0x3F8, b"queued")  # e.g. from another vCPU
    device.write(uart.MCR, bytes([uart.MCR_LOOP]))
    device.flush()
    assert out == b"queued"  # sent under the old mode, not looped back
    assert not device.input_room() < uart.INPUT_CAPACITY


def test_the_c_loop_reads_the_uart_cells() -> None:
    fast, device, _, _, _ = make()
    device.enqueue_input(b"k")
    device.write(uart.IER_DLM, bytes([uart.IER_RX_DATA]))
    block = fast._fast[0]  # what pyvmm_run_uart_fast answers from
    assert block.lsr[0] == rd(device, uart.LSR) and block.lsr[0] & 1
    assert block.ier[0] == rd(device, uart.IER_DLM) == uart.IER_RX_DATA
    assert block.ier_valid[0] == 1
    assert (block.lsr_port, block.ier_port) == (0x3F8 + uart.LSR, 0x3F8 + uart.IER_DLM)
    device.write(uart.LCR, bytes([uart.LCR_DLAB]))  # IER's port is now DLM
    assert block.ier_valid[0] == 0


def test_halves_can_be_turned_off() -> None:
    assert wanted_halves(None) == (True, True)
    assert wanted_halves("off") == (False, False)
    assert wanted_halves("coalesce") == (True, False)
    assert wanted_halves("c") == (False, True)
    out = bytearray()
    device = Serial(FakeLine(), out.extend)
    vm = FakeVm()
    fast = UartFastPath(FakeKvm(), vm, [FakeVcpu(FakeRing())], device, 0x3F8,  # type: ignore[arg-type, list-item]
                        "off")
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
