"""The KVM VM fd: memory slots, the in-kernel irqchip and PIT, eventfd wiring, vCPUs."""

from __future__ import annotations

import os
from typing import Any

from pyvmm.kvm._ffi import ffi, ioctl, ioctl_value, lib
from pyvmm.kvm.vcpu import Vcpu


class Vm:
    """One virtual machine (the fd KVM_CREATE_VM returned)."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self._vcpu_mmap_size = vcpu_mmap_size
        # Reused for every KVM_IRQ_LINE so raising a line allocates nothing.
        self._irq_level = ffi.new("struct kvm_irq_level *")
        #: The lines ``irq_line_pulse`` handed out, kept alive as long as the VM.
        self._pulse_lines: dict[int, Any] = {}

    def set_tss_address(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages Intel VMX needs below 4 GiB, outside RAM."""
        ioctl_value(self.fd, lib.KVM_SET_TSS_ADDR, address, "KVM_SET_TSS_ADDR")

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU local APICs."""
        ioctl_value(self.fd, lib.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254 timer (speaker port answered in-kernel)."""
        config = ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY})
        ioctl(self.fd, lib.KVM_CREATE_PIT2, config, "KVM_CREATE_PIT2")

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int,
                               host_addr: int) -> None:
        """KVM_SET_USER_MEMORY_REGION: back guest RAM at ``guest_phys_addr``."""
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": 0, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": host_addr})
        ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def set_irq_line(self, irq: int, level: bool) -> None:
        """KVM_IRQ_LINE: drive an interrupt line of the in-kernel irqchip."""
        self._irq_level.irq = irq
        self._irq_level.level = 1 if level else 0
        ioctl(self.fd, lib.KVM_IRQ_LINE, self._irq_level, "KVM_IRQ_LINE")

    def irq_line_pulse(self, irq: int) -> tuple[int, int]:
        """An edge on ``irq`` for a device's C thread to make itself: the addresses of
        ``int pyvmm_irq_line_pulse(void *line)`` (KVM_IRQ_LINE up then down, 0 or
        -errno) and of its line.  An irqfd on an IOAPIC line is injected by a kworker
        (KVM injects only MSIs from the eventfd's wake-up), one more thread to wake
        per interrupt; made by the thread that used the buffers, it wakes the vCPU
        directly.  Opaque to the device, which keeps its irqfd for when this fails."""
        line = self._pulse_line(irq)
        function = ffi.addressof(lib, "pyvmm_irq_line_pulse")
        return int(ffi.cast("uintptr_t", function)), int(ffi.cast("uintptr_t", line))

    def _pulse_line(self, irq: int) -> Any:
        line = self._pulse_lines.get(irq)
        if line is None:
            line = self._pulse_lines[irq] = ffi.new("pyvmm_irq_line *",
                                                    {"vm_fd": self.fd, "irq": irq})
        return line

    def pulse_irq_line(self, irq: int) -> None:
        """An edge on ``irq`` made now, from the calling thread: the pulse of
        ``irq_line_pulse`` (KVM_IRQ_LINE up then down, in C: one call from Python).
        OSError if KVM refused it."""
        result = lib.pyvmm_irq_line_pulse(self._pulse_line(irq))
        if result < 0:
            raise OSError(-result, f"KVM_IRQ_LINE {irq}: {os.strerror(-result)}")

    def register_ioeventfd(self, event_fd: int, addr: int, length: int,
                           datamatch: int | None = None, pio: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write to ``addr`` signals ``event_fd`` in-kernel.

        The vCPU does not return to userspace for that write, so device work
        happens on the event loop while the vCPU keeps running.
        """
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        request = ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": addr, "len": length,
            "fd": event_fd, "flags": flags})
        ioctl(self.fd, lib.KVM_IOEVENTFD, request, "KVM_IOEVENTFD")

    def register_irqfd(self, event_fd: int, gsi: int) -> None:
        """KVM_IRQFD: a write to ``event_fd`` injects an edge on ``gsi`` in-kernel."""
        request = ffi.new("struct kvm_irqfd *", {"fd": event_fd, "gsi": gsi, "flags": 0})
        ioctl(self.fd, lib.KVM_IRQFD, request, "KVM_IRQFD")

    def coalesce_pio(self, port: int, length: int, on: bool = True) -> None:
        """KVM_(UN)REGISTER_COALESCED_MMIO with pio=1: guest writes to these ports queue
        in the ring page (``Vcpu.coalesced_ring_address``) instead of exiting; reads still exit."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *",
                       {"addr": port, "size": length, "pio": 1})
        request = lib.KVM_REGISTER_COALESCED_MMIO if on else lib.KVM_UNREGISTER_COALESCED_MMIO
        ioctl(self.fd, request, zone, "KVM_(UN)REGISTER_COALESCED_MMIO")

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU: vCPU ``vcpu_id`` (its initial APIC ID)."""
        fd = ioctl_value(self.fd, lib.KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
        return Vcpu(fd, vcpu_id, self._vcpu_mmap_size)

    def close(self) -> None:
        for line in self._pulse_lines.values():
            line.vm_fd = -1  # a pulse after this fails (EBADF): the thread's irqfd then
        os.close(self.fd)
