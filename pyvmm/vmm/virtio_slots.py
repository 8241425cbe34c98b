"""Where the virtio-mmio devices go, and how they are wired to KVM.

``plan_virtio_slots`` is pure: one MMIO window and one IRQ line per device,
disks first (so --drive order gives vda, vdb, …), then the virtio-fs shares,
the NICs (--net order: eth0, eth1, ...), the vsock, the command mode's stream ports, the
console, then the entropy device (last, so that ``--rng`` moves no other
device's window).
``attach_virtio`` does the KVM side the devices know nothing of: each queue's
notify register becomes an ioeventfd (the vCPU does not leave the kernel for
it; the event loop serves the queue) and each IRQ line an irqfd.  A device
whose queues a vhost-user back end (virtio-fs), the kernel's vhost-net or a thread of its own
(a NIC over passt's stream) serves gets its own kick eventfds bound as the ioeventfds, and the
irqfd as its call fd (a device's own thread gets the machine's KVM_IRQ_LINE
pulse too, ``Vm.irq_line_pulse``, to interrupt the guest without the irqfd's
kworker); the event loop never sees them, but for the queues the device serves itself
(``loop_queues``: vsock's event queue).  Such a device's interrupt registers
(InterruptStatus, InterruptACK) are served without Python too, when the
machine hands over ``interrupts`` (``pyvmm.vcpu.interrupt_status``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pyvmm.arch.x86_64 import layout
from pyvmm.config.machine import MachineConfig
from pyvmm.config.network import NetConfig, nics
from pyvmm.config.tables import DriveConfig, ShareConfig
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.errors import ConfigError

if TYPE_CHECKING:
    from pyvmm.devices.virtio.ports import Port
    from pyvmm.vcpu.interrupt_status import InterruptRegistersOffPython
    from pyvmm.vhost.vsock import VhostVsock
    from pyvmm.vmm.disks import Disks
    from pyvmm.vmm.network import Networks
    from pyvmm.vmm.shares import Shares

#: What pyvmm announces as each window's size on the kernel command line.
ANNOUNCED_SIZE = "4K"
#: The same window as an ACPI resource (Memory32Fixed length).
ACPI_WINDOW_SIZE = 0x1000


@dataclass(frozen=True)
class VirtioSlot:
    """One virtio-mmio device: its window, IRQ line and what it is."""

    base: int
    irq: int
    kind: str                      # "block", "fs", "net", "vsock", "ports", "console" or "rng"
    drive: DriveConfig | None = None
    share: ShareConfig | None = None
    net: NetConfig | None = None

    def announcement(self) -> str:
        """The ``virtio_mmio.device=`` parameter Linux reads (VIRTIO_MMIO_CMDLINE_DEVICES)."""
        return f"virtio_mmio.device={ANNOUNCED_SIZE}@{self.base:#x}:{self.irq}"


def plan_virtio_slots(config: MachineConfig) -> list[VirtioSlot]:
    kinds: list[tuple[str, DriveConfig | None, ShareConfig | None, NetConfig | None]] = [
        ("block", d, None, None) for d in config.drives]
    kinds += [("fs", None, share, None) for share in config.shares]
    kinds += [("net", None, None, nic) for nic in nics(config.nets)]
    if config.vsock is not None or config.vsock_auto:
        kinds.append(("vsock", None, None, None))
    if config.stdio_ports:
        kinds.append(("ports", None, None, None))
    if config.virtio_console:
        kinds.append(("console", None, None, None))
    if config.rng:
        kinds.append(("rng", None, None, None))
    if len(kinds) > len(layout.VIRTIO_IRQS):
        raise ConfigError(f"{len(kinds)} virtio devices asked for; pyvmm has IRQ lines "
                          f"for {len(layout.VIRTIO_IRQS)}")
    return [VirtioSlot(layout.VIRTIO_MMIO_START + index * layout.VIRTIO_MMIO_SIZE,
                       layout.VIRTIO_IRQS[index], kind, drive, share, net)
            for index, (kind, drive, share, net) in enumerate(kinds)]


def acpi_platform(config: MachineConfig, slots: list[VirtioSlot]):
    """What the ACPI tables describe: CPUs, and virtio slots only if announced there."""
    # Here, not at the top: `pyvmm config show` plans slots without the ~12 ms
    # of the ACPI and device modules (the same holds for the imports below).
    from pyvmm.acpi.tables import AcpiPlatform
    from pyvmm.acpi.tables import VirtioWindow

    described = () if config.virtio_announce == "cmdline" else tuple(
        VirtioWindow(slot.base, ACPI_WINDOW_SIZE, slot.irq) for slot in slots)
    return AcpiPlatform(cpus=config.cpus, virtio=described)


def announce(slots: list[VirtioSlot]) -> str:
    return " ".join(slot.announcement() for slot in slots)


def open_virtio_devices(slots: list[VirtioSlot], console_out: Callable[[memoryview], None],
                        shares: Shares, on_backend_failure: Callable[[str], None],
                        ports: Sequence[Port] = (), disks: Disks | None = None,
                        networks: Networks | None = None,
                        vsock: VhostVsock | None = None) -> list[VirtioDevice]:
    """The device of each slot, in slot order: every virtio device is made here.

    Disks pyvmm serves are opened (and locked) here, before KVM; a disk
    qemu-storage-daemon serves, and a share, are made from their daemon's
    connection (``disks.start``, ``shares.start``), a NIC's from its passt
    (``networks.start``) or its tap (vhost-net's rings, like vhost-user's), the vsock's
    from its open /dev/vhost-vsock (``open_vsock``); the stream ports (command mode) from the ``ports``
    their owner describes.
    """
    from pyvmm.devices.virtio.block import BlockDevice
    from pyvmm.devices.virtio.console import ConsoleDevice
    from pyvmm.host.disk_image import DiskImage

    devices: list[VirtioDevice] = []
    drive_index = 0
    nic_index = 0
    try:
        for slot in slots:
            if slot.kind == "block" and disks is not None and \
                    disks.served_by_daemon(drive_index):
                from pyvmm.devices.virtio.vhost_user import VhostBlockDevice

                frontend, features, config = disks.backend(drive_index)
                devices.append(VhostBlockDevice(frontend, features, config,
                                                on_backend_failure))
                drive_index += 1
            elif slot.kind == "block":
                assert slot.drive is not None
                drive = slot.drive
                serial = drive.serial or f"pyvmm-vd{chr(ord('a') + len(devices))}"
                image = disks.open_image(drive_index) if disks is not None else \
                    DiskImage(drive.path, readonly=drive.readonly,
                              direct=drive.cache == "none")
                drive_index += 1
                devices.append(BlockDevice(image, serial))
            elif slot.kind == "fs":
                from pyvmm.devices.virtio.fs import FsDevice

                assert slot.share is not None
                frontend, features = shares.backend(slot.share)
                devices.append(FsDevice(frontend, features, slot.share.tag, on_backend_failure))
            elif slot.kind == "net":
                assert slot.net is not None and networks is not None
                devices.append(networks.device(nic_index, slot.net, on_backend_failure))
                nic_index += 1
            elif slot.kind == "vsock":
                from pyvmm.devices.virtio.vsock import VsockDevice

                assert vsock is not None  # open_vsock(config)
                devices.append(VsockDevice(vsock, vsock.cid, on_backend_failure))
            elif slot.kind == "ports":
                from pyvmm.devices.virtio.ports import PortsDevice

                devices.append(PortsDevice(list(ports)))
            elif slot.kind == "rng":
                from pyvmm.devices.virtio.rng import RngDevice

                devices.append(RngDevice())
            else:
                devices.append(ConsoleDevice(console_out))
    except Exception:
        for device in devices:
            device.shutdown()
            close = getattr(device, "close", None)  # a vhost-user device's own eventfds
            if close is not None:
                close()
        raise
    return devices


def open_vsock(config: MachineConfig) -> VhostVsock | None:
    """/dev/vhost-vsock with the guest's CID claimed (VsockSetupError, exit 2, if it can't
    be), before anything else starts; command mode's own vsock takes the first free CID
    of a range its process id picks."""
    if config.vsock is not None:
        from pyvmm.vhost.vsock import VhostVsock

        return VhostVsock(config.vsock)
    if config.vsock_auto:
        from pyvmm.vhost.vsock import FIRST_GUEST_CID, claim_any_cid

        return claim_any_cid(FIRST_GUEST_CID + 1000 + os.getpid() % 1_000_000 * 64)
    return None


class IrqLineTrigger:
    """An edge made by the thread that raises it: KVM_IRQ_LINE up then down
    (``Vm.pulse_irq_line``), as the devices' C threads make theirs.  An irqfd on an
    IOAPIC line is injected by a kworker (KVM injects only MSIs from the eventfd's
    wake-up): one more thread to wake per interrupt of a device Python serves (a tap
    with ``vhost=off``, the console).  The irqfd stays bound, and carries the edge
    if the pulse fails."""

    def __init__(self, irq_fd: int, vm: Any, irq: int) -> None:
        self._irq_fd = irq_fd
        self._vm = vm
        self._irq = irq
        #: Pulses KVM refused (the irqfd carried them).
        self.failures = 0

    def trigger(self) -> None:
        try:
            self._vm.pulse_irq_line(self._irq)
        except OSError:
            self.failures += 1
            os.eventfd_write(self._irq_fd, 1)


def irq_line_fallbacks(transports: Sequence) -> dict[str, int]:
    """``--stats``: interrupts the transports' irqfds carried because a pulse failed."""
    return {"irq-line-fallbacks": sum(t.interrupt.failures for t in transports)}


def attach_virtio(vm, loop, mmio_bus, memory, slots: list[VirtioSlot], devices,
                  interrupts: InterruptRegistersOffPython | None = None
                  ) -> tuple[list, list[int]]:
    """Map each device's transport and bind its notifications and interrupt to KVM.

    Returns the transports and the eventfds made here, for the machine to close.
    """
    owned_fds: list[int] = []
    from pyvmm.devices.virtio.mmio import (INTERRUPT_ACK, INTERRUPT_STATUS, QUEUE_NOTIFY,
                                           VirtioMmioTransport)

    transports = []
    for slot, device in zip(slots, devices):
        irq_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        owned_fds.append(irq_fd)
        vm.register_irqfd(irq_fd, slot.irq)
        transport = VirtioMmioTransport(device, memory, IrqLineTrigger(irq_fd, vm, slot.irq))
        mmio_bus.insert(transport, slot.base, layout.VIRTIO_MMIO_SIZE)
        transports.append(transport)
        # Asked first: a NIC over passt and a raw disk become back-end served (a thread
        # of their own) by it.
        kick_fds = getattr(device, "kick_fds", None)
        if device.backend_interrupts and interrupts is not None:
            set_status = interrupts.serve(vm, slot.base + INTERRUPT_STATUS,
                                          slot.base + INTERRUPT_ACK)
            if set_status is not None:
                transport.report_status_to(set_status)
        if kick_fds is not None:  # a back end (vhost-user, vhost, a NIC's or disk's thread)
            device.call_fd = irq_fd
            # A device's own C thread (a NIC over passt, a raw disk) may interrupt the
            # guest itself, KVM_IRQ_LINE from that thread, rather than through the irqfd
            # and the kworker that injects an IOAPIC line's irqfd; the irqfd stays its
            # fallback.
            if hasattr(device, "interrupt_pulse") and hasattr(vm, "irq_line_pulse"):
                device.interrupt_pulse = vm.irq_line_pulse(slot.irq)
            owned_fds.extend(kick_fds)
            for index, kick_fd in enumerate(kick_fds):
                vm.register_ioeventfd(kick_fd, slot.base + QUEUE_NOTIFY, 4, datamatch=index)
            for index in getattr(device, "loop_queues", ()):
                loop.add(kick_fds[index], _notify_handler(kick_fds[index], transport, index))
            continue
        for index in range(len(device.queues)):
            notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            owned_fds.append(notify_fd)
            vm.register_ioeventfd(notify_fd, slot.base + QUEUE_NOTIFY, 4, datamatch=index)
            loop.add(notify_fd, _notify_handler(notify_fd, transport, index))
    return transports, owned_fds


def serve_restored_queues(transports: Sequence) -> None:
    """After a restore: serve what the driver queued before the snapshot.

    A notification KVM had signalled but the event loop not yet read when the
    snapshot was taken is not in it; the chains are (in the available ring),
    so each started queue is served once, as a notification would (a device
    served by a thread of its own serves once when it starts).  Requests
    never straddle a snapshot: the devices serve them on the event loop, which
    takes the snapshot between two events, or on their thread, which a
    device's ``to_state`` stops (its pass ends) and starts again.
    """
    for transport in transports:
        if getattr(transport.device, "kick_fds", None) is not None:
            continue  # a vhost-user back end's rings (never in a snapshot)
        for index, queue in enumerate(transport.device.queues):
            if queue.ready:
                transport.notify(index)


def _notify_handler(event_fd: int, transport, index: int) -> Callable[[int], None]:
    def on_notify(_events: int) -> None:
        try:
            os.eventfd_read(event_fd)
        except BlockingIOError:
            return
        if transport.notify(index):
            os.eventfd_write(event_fd, 1)  # more to do: after the loop's other events
    return on_notify
