"""attach_virtio: which windows' interrupt registers the machine serves without Python.

A NIC over passt's stream is served by a thread of its own (kick eventfds bound as
KVM's ioeventfds, the irqfd its call): like a vhost device, its InterruptStatus reads
go to the vCPU's C table and its used-buffer ACK to a KVM ioeventfd; a NIC over a
tap pyvmm serves from its loop keeps both in Python."""

from __future__ import annotations

import os
import select
import socket
from typing import Any

from pyvmm.config.network import NetConfig
from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.net import NetDevice
from pyvmm.memory import GuestMemory
from pyvmm.vcpu._uart_cffi import ffi, lib
from pyvmm.vcpu.interrupt_status import USED_BUFFER, InterruptRegistersOffPython
from pyvmm.vhost.stream import FrameStream
from pyvmm.vmm.virtio_slots import IrqLineTrigger, VirtioSlot, attach_virtio, irq_line_fallbacks
from tests.unit.devices.virtio.test_virtio_net import MAC, FakeLink

BASE = 0xD000_0000


class FakeVm:
    """A VM's registrations, kept; ``refuse`` makes KVM fail the line's pulses."""

    def __init__(self, refuse: bool = False) -> None:
        self.ioeventfds: list[tuple[int, int, int | None]] = []
        self.irqfds: list[tuple[int, int]] = []
        self.pulses: list[int] = []
        self.refuse = refuse

    def register_ioeventfd(self, event_fd: int, addr: int, length: int,
                           datamatch: int | None = None, pio: bool = False) -> None:
        self.ioeventfds.append((event_fd, addr, datamatch))

    def register_irqfd(self, event_fd: int, gsi: int) -> None:
        self.irqfds.append((event_fd, gsi))

    def irq_line_pulse(self, irq: int) -> tuple[int, int]:
        return 0x1000, irq  # (the function's address, its context's): opaque to devices

    def pulse_irq_line(self, irq: int) -> None:
        if self.refuse:
            raise OSError(9, "KVM_IRQ_LINE: Bad file descriptor")
        self.pulses.append(irq)


class FakeLoop:
    def __init__(self) -> None:
        self.watched: list[int] = []

    def add(self, fd: int, handler: Any, events: int = 0) -> None:
        self.watched.append(fd)


class FakeBus:
    def insert(self, device: Any, base: int, size: int) -> None:
        pass


def status_read_in_c(interrupts: InterruptRegistersOffPython, addr: int) -> int | None:
    fast = ffi.new("pyvmm_uart_fast *", {"fd": -1, "status": interrupts.table})
    data = ffi.new("__u8[8]")
    if not lib.pyvmm_status_read(fast, addr, 4, data):
        return None
    return int.from_bytes(ffi.buffer(data, 4)[:], "little")


def test_a_nic_over_passts_stream_has_its_interrupt_registers_off_python() -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    passt_nic = NetDevice(FrameStream(ours), MAC, 65520)
    tap_nic = NetDevice(FakeLink(), MAC, 1500, header_in_frames=True)
    slots = [VirtioSlot(BASE, 5, "net", net=NetConfig(type="user")),
             VirtioSlot(BASE + 0x1000, 6, "net", net=NetConfig(type="tap", ifname="t0"))]
    vm, loop, interrupts = FakeVm(), FakeLoop(), InterruptRegistersOffPython()
    fds: list[int] = []
    try:
        _, fds = attach_virtio(vm, loop, FakeBus(), GuestMemory([]), slots,
                               [passt_nic, tap_nic], interrupts)
        assert passt_nic.backend_interrupts and not tap_nic.backend_interrupts
        assert status_read_in_c(interrupts, BASE + mmio.INTERRUPT_STATUS) == USED_BUFFER
        assert status_read_in_c(interrupts, BASE + 0x1000 + mmio.INTERRUPT_STATUS) is None
        acks = [(addr, datamatch) for _, addr, datamatch in vm.ioeventfds
                if addr & 0xFFF == mmio.INTERRUPT_ACK]
        assert acks == [(BASE + mmio.INTERRUPT_ACK, USED_BUFFER)]
        # Its queues' notifies are the thread's kick eventfds, not the loop's.
        kicks = [(fd, datamatch) for fd, addr, datamatch in vm.ioeventfds
                 if addr == BASE + mmio.QUEUE_NOTIFY]
        assert kicks == [(passt_nic.kick_fds[0], 0), (passt_nic.kick_fds[1], 1)]
        assert passt_nic.call_fd == vm.irqfds[0][0]
        # Its thread interrupts the guest through the machine's pulse on its own line.
        assert passt_nic.interrupt_pulse == (0x1000, 5) and tap_nic.interrupt_pulse is None
        assert not set(passt_nic.kick_fds) & set(loop.watched)
    finally:
        for fd in fds:
            os.close(fd)
        interrupts.close()
        ours.close()
        peer.close()


def test_a_device_python_serves_interrupts_by_the_line_pulse_the_irqfd_its_fallback() -> None:
    """A tap with vhost=off (its frames Python's): its interrupt is KVM_IRQ_LINE made by the
    thread that raises it, not an irqfd write a kworker injects; the irqfd if that fails."""
    tap_nic = NetDevice(FakeLink(), MAC, 1500, header_in_frames=True)
    slots = [VirtioSlot(BASE, 6, "net", net=NetConfig(type="tap", ifname="t0"))]
    for refuse in (False, True):
        vm = FakeVm(refuse)
        transports, fds = attach_virtio(vm, FakeLoop(), FakeBus(), GuestMemory([]), slots,
                                        [tap_nic], InterruptRegistersOffPython())
        try:
            trigger = transports[0].interrupt
            assert isinstance(trigger, IrqLineTrigger)
            trigger.trigger()
            irqfd = vm.irqfds[0][0]
            signalled = bool(select.select([irqfd], [], [], 0)[0])
            assert (vm.pulses, signalled, trigger.failures) == \
                (([], True, 1) if refuse else ([6], False, 0))
            assert irq_line_fallbacks(transports) == {"irq-line-fallbacks": int(refuse)}
        finally:
            for fd in fds:
                os.close(fd)
