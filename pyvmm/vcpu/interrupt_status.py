"""The interrupt registers of vhost-served virtio-mmio devices, off Python's path.

When the kernel (vhost-net, vhost-vsock) or a vhost-user back end (virtiofsd,
qemu-storage-daemon) serves a device's queues, it raises the used-buffer
interrupt itself, through the irqfd, and the transport always reports the
used-buffer bit in InterruptStatus (it can't know when the back end used a
buffer).  Linux's virtio-mmio interrupt handler still reads InterruptStatus
and writes the value back to InterruptACK, two MMIO exits per interrupt that
Python would serve on the vCPU thread (about half of a 1-byte round trip's
exits with vhost-net).  Here neither reaches Python:

* **InterruptStatus reads** are answered by the vCPUs' C loop
  (``pyvmm_status_read`` in ``_uart_build.py``) from a table of words the
  transport keeps current (``VirtioMmioTransport.on_reported_status``): the
  used-buffer bit, or'ed with a config change Python raised;
* **InterruptACK writes of the used-buffer bit alone** are absorbed by KVM
  itself (an ioeventfd with that datamatch, whose count nobody reads until
  ``--stats``); a write that acknowledges a config change still exits, and
  Python clears the bit, and the table's word, as before.

The machine decides which windows (``attach_virtio``, from the device's
``backend_interrupts``); devices and the transport know nothing of this.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from pyvmm.vcpu._uart_cffi import ffi  # built with the UART fast path (uart_fastpath.py)

class IoeventfdVm(Protocol):
    """What this needs of the VM (``pyvmm.kvm.vm.Vm``)."""

    def register_ioeventfd(self, event_fd: int, addr: int, length: int,
                           datamatch: int | None = None, pio: bool = False) -> None: ...


#: The used-buffer bit of InterruptStatus (virtio 1.2, 4.2.2), the ACK KVM absorbs.
USED_BUFFER = 1


class InterruptRegistersOffPython:
    """The table the C loop reads, and the ACK eventfds KVM signals."""

    def __init__(self) -> None:
        #: The ``pyvmm_status_table`` every vCPU's ``pyvmm_uart_fast`` points to.
        self.table: Any = ffi.new("pyvmm_status_table *")
        self.capacity = len(self.table.addr)
        #: (InterruptACK's address, its eventfd), per window served.
        self._acks: list[tuple[int, int]] = []

    def serve(self, vm: IoeventfdVm, status_addr: int, ack_addr: int) -> Callable[[int], None] | None:
        """Answer ``status_addr``'s reads in C and let KVM absorb ``ack_addr``'s used-buffer
        ACKs; returns the function that sets what a read returns (None when the table is
        full: Python serves that window as before)."""
        table = self.table
        index = int(table.count)
        if index >= self.capacity:
            return None
        ack_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            vm.register_ioeventfd(ack_fd, ack_addr, 4, datamatch=USED_BUFFER)
        except BaseException:
            os.close(ack_fd)
            raise
        self._acks.append((ack_addr, ack_fd))
        table.status[index] = USED_BUFFER
        table.addr[index] = status_addr
        table.count = index + 1  # after the address: a vCPU reads count first

        def set_status(value: int) -> None:
            table.status[index] = value  # an aligned 32-bit store: the C side reads it whole

        return set_status

    def reads_served(self, fast: Any) -> dict[tuple[str, int], int]:
        """The InterruptStatus reads one vCPU's loop (``pyvmm_uart_fast``) answered, as
        --stats keys."""
        return {("mmio-read-c", int(self.table.addr[index])): int(fast.status_reads[index])
                for index in range(int(self.table.count)) if fast.status_reads[index]}

    def acks_absorbed(self) -> dict[tuple[str, int], int]:
        """The InterruptACK writes KVM absorbed since the last call, as --stats keys."""
        counts = {}
        for addr, fd in self._acks:
            try:
                counts[("mmio-write-kvm", addr)] = os.eventfd_read(fd)
            except (BlockingIOError, OSError):
                continue
        return counts

    def close(self) -> None:
        """Close the ACK eventfds (KVM holds its own references while the VM lives)."""
        for _, fd in self._acks:
            os.close(fd)
        self._acks = []
