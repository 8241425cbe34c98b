"""The UART fast path's ring handling and mode switches, over a ring in plain memory."""

from __future__ import annotations

import mmap

from pyvmm.devices import serial as uart
from pyvmm.devices.serial import Serial
from pyvmm.kvm._ffi import ffi, lib
from pyvmm.vcpu.uart_fastpath import RING_POLL_SECONDS, UartFastPath, wanted_halves

from tests.unit.devices.conftest import FakeLine, rd

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
    def check_extension(self, capability: int) -> int:
        return 1 if capability == lib.KVM_CAP_COALESCED_PIO else 0


class FakeVm:
    def __init__(self) -> None:
        self.zones: list[tuple[int, int, bool]] = []

    def coalesce_pio(self, port: int, length: int, on: bool = True) -> None:
        self.zones.append((port, length, on))


class FakeVcpu:
    id = 0

    def __init__(self, ring: FakeRing) -> None:
        self._ring = ring

    def coalesced_ring(self):
        return self._ring.ring

    def uart_fast(self, cells, base_port, ring):
        return ffi.new("pyvmm_uart_fast *", {"fd": -1, "cells": cells, "base": base_port,
                                             "ring": ring})


def make():
    out = bytearray()
    device = Serial(FakeLine(), out.extend)
    ring, vm = FakeRing(), FakeVm()
    fast = UartFastPath(FakeKvm(), vm, [FakeVcpu(ring)], device, 0x3F8, "on")  # type: ignore[arg-type]
    return fast, device, ring, vm, out


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
    cells = fast._cells  # what pyvmm_run_uart_fast answers from
    assert cells[uart.CELL_LSR] == rd(device, uart.LSR) and cells[uart.CELL_LSR] & 1
    assert cells[uart.CELL_IER] == rd(device, uart.IER_DLM) == uart.IER_RX_DATA
    assert cells[uart.CELL_IER_VALID] == 1


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
