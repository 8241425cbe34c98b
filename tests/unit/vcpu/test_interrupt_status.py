"""Virtio interrupt registers off Python: what the vCPU's C loop answers for an
InterruptStatus read, kept by the transport, and the ACK KVM absorbs."""

from __future__ import annotations

import os
from typing import Any

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.memory import GuestMemory
from pyvmm.vcpu._uart_cffi import ffi, lib
from pyvmm.vcpu.interrupt_status import USED_BUFFER, InterruptRegistersOffPython
from pyvmm.vcpu.stats import NO_EXIT_KINDS

BASE = 0xD000_0000


class FakeVm:
    def __init__(self) -> None:
        self.ioeventfds: list[tuple[int, int, int, int | None]] = []

    def register_ioeventfd(self, event_fd: int, addr: int, length: int,
                           datamatch: int | None = None, pio: bool = False) -> None:
        self.ioeventfds.append((event_fd, addr, length, datamatch))


class BackendDevice(VirtioDevice):
    device_id = 19
    backend_interrupts = True


class NoTrigger:
    def trigger(self) -> None:
        pass


def read_in_c(fast: Any, addr: int) -> int | None:
    """What ``pyvmm_status_read`` answers for a 4-byte read at ``addr`` (None: declined)."""
    data = ffi.new("__u8[8]")
    if not lib.pyvmm_status_read(fast, addr, 4, data):
        return None
    return int.from_bytes(ffi.buffer(data, 4)[:], "little")


def wired() -> tuple[InterruptRegistersOffPython, Any, mmio.VirtioMmioTransport, FakeVm]:
    interrupts, vm = InterruptRegistersOffPython(), FakeVm()
    fast = ffi.new("pyvmm_uart_fast *", {"fd": -1, "status": interrupts.table})
    transport = mmio.VirtioMmioTransport(BackendDevice((8,)), GuestMemory([]), NoTrigger())
    set_status = interrupts.serve(vm, BASE + mmio.INTERRUPT_STATUS, BASE + mmio.INTERRUPT_ACK)
    assert set_status is not None
    transport.report_status_to(set_status)
    return interrupts, fast, transport, vm


def test_the_loop_answers_the_status_read_the_transport_would() -> None:
    interrupts, fast, transport, vm = wired()
    try:
        assert read_in_c(fast, BASE + mmio.INTERRUPT_STATUS) == USED_BUFFER
        assert read_in_c(fast, BASE + mmio.INTERRUPT_ACK) is None  # other registers: Python
        assert read_in_c(fast, BASE + 0x1000 + mmio.INTERRUPT_STATUS) is None
        data = ffi.new("__u8[8]")
        assert not lib.pyvmm_status_read(fast, BASE + mmio.INTERRUPT_STATUS, 2, data)
        # A config change Python raises is in the next read; its ACK (3) exits and clears it.
        transport.raise_interrupt(mmio.INTERRUPT_CONFIG_CHANGE)
        assert read_in_c(fast, BASE + mmio.INTERRUPT_STATUS) == 3
        transport.write(mmio.INTERRUPT_ACK, (3).to_bytes(4, "little"))
        assert read_in_c(fast, BASE + mmio.INTERRUPT_STATUS) == USED_BUFFER
        # A reset keeps the used-buffer bit a back end's device always reports.
        transport.raise_interrupt(mmio.INTERRUPT_CONFIG_CHANGE)
        transport.write(mmio.STATUS, bytes(4))
        assert read_in_c(fast, BASE + mmio.INTERRUPT_STATUS) == USED_BUFFER
        assert interrupts.reads_served(fast) == {
            ("mmio-read-c", BASE + mmio.INTERRUPT_STATUS): 4}
    finally:
        interrupts.close()


def test_only_the_used_buffer_ack_is_left_to_kvm() -> None:
    interrupts, _, _, vm = wired()
    try:
        [(fd, addr, length, datamatch)] = vm.ioeventfds
        assert (addr, length, datamatch) == (BASE + mmio.INTERRUPT_ACK, 4, USED_BUFFER)
        os.eventfd_write(fd, 5)  # KVM signalled five absorbed ACKs
        assert interrupts.acks_absorbed() == {("mmio-write-kvm", addr): 5}
        assert interrupts.acks_absorbed() == {}
        assert {"mmio-read-c", "mmio-write-kvm"} <= set(NO_EXIT_KINDS)
    finally:
        interrupts.close()


def test_a_full_table_leaves_the_window_to_python() -> None:
    interrupts, vm = InterruptRegistersOffPython(), FakeVm()
    try:
        setters = [interrupts.serve(vm, BASE + index * 0x1000, BASE + index * 0x1000 + 4)
                   for index in range(interrupts.capacity + 1)]
        assert all(setters[:-1]) and setters[-1] is None
        assert len(vm.ioeventfds) == interrupts.capacity
    finally:
        interrupts.close()
