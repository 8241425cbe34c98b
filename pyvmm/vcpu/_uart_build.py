"""cffi build script for the UART fast path's C half (API, out-of-line mode).

Two functions for ``pyvmm.vcpu.uart_fastpath``, its one user: a KVM_RUN loop
that answers the 8250 console's line-status and IER polls without returning
to Python, and the reader of KVM's coalesced-I/O ring.  They are a module of
their own, beside the code that uses them: the KVM binding knows nothing of a
UART, it hands over the vCPU's fd, its kvm_run mapping and the ring page (as
addresses).  Compiled at install time against the host's ``<linux/kvm.h>``:
``...`` lets the compiler fill in the layouts, nothing is a hand-counted offset.
cffi releases the GIL around each call, so a vCPU in the loop stops no other.
"""

from __future__ import annotations

import cffi

# The loop's argument block (one per vCPU), shared by Python (through cffi) and
# the C loop: its one declaration, used in both the cdef and the C source below.
# Which ports and cells mean LSR and IER is Python's to say (pyvmm.devices.serial).
UART_FAST_STRUCT = r"""
typedef struct {
    int fd;                                 /* the vCPU's */
    struct kvm_run *run;                    /* its kvm_run mapping */
    struct kvm_coalesced_mmio_ring *ring;   /* NULL unless THR writes are coalesced */
    const __u8 *lsr;                        /* the UART's published LSR value, */
    const __u8 *ier;                        /* IER value, */
    const __u8 *ier_valid;                  /* and 1 while IER is at ier_port (DLAB clear) */
    __u16 lsr_port;
    __u16 ier_port;
    __u64 lsr_reads;                        /* what the loop answered */
    __u64 ier_reads;
    __u64 ier_writes;
} pyvmm_uart_fast;
"""

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct kvm_run;  /* opaque here: only the C loop reads it */

/* Coalesced MMIO/PIO: KVM queues writes to a registered zone in a ring page
   (a page of every vCPU's kvm_run mapping) instead of exiting. */
struct kvm_coalesced_mmio { __u64 phys_addr; __u32 len; __u32 pio; __u8 data[8]; ...; };
struct kvm_coalesced_mmio_ring { __u32 first; __u32 last; ...; };

/* Copy up to room queued writes' bytes to out, oldest first, and free their
   slots; returns how many.  Each entry is a 1-byte write to the one coalesced
   port (THR).  Single consumer: the caller serialises. */
int pyvmm_coalesced_drain(struct kvm_coalesced_mmio_ring *ring, __u8 *out, int room);

/* KVM_RUN until an exit it can't answer: a 1-byte read of lsr_port, or a read
   of ier_port or a write of the value IER already has (a no-op) while
   *ier_valid, is answered from the cells and counted.  It returns 0 for any
   other exit (left in kvm_run), and for an LSR read when the newest coalesced
   write is a newline (so the line goes out now); -errno when KVM_RUN fails
   (EINTR: kicked). */
""" + UART_FAST_STRUCT + r"""
int pyvmm_run_uart_fast(pyvmm_uart_fast *fast);
"""

SOURCE = r"""
#include <errno.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

""" + UART_FAST_STRUCT + r"""

/* Slots in the ring page (the kernel's KVM_COALESCED_MMIO_MAX, which needs PAGE_SIZE). */
static __u32 pyvmm_coalesced_max(void)
{
    return (sysconf(_SC_PAGESIZE) - sizeof(struct kvm_coalesced_mmio_ring))
           / sizeof(struct kvm_coalesced_mmio);
}

/* Read 'last' before the entries, free the slots only after copying them (the
   kernel's producer side pairs these). */
static int pyvmm_coalesced_drain(struct kvm_coalesced_mmio_ring *ring, __u8 *out, int room)
{
    __u32 max = pyvmm_coalesced_max();
    __u32 first = ring->first;
    __u32 last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    int taken = 0;
    while (first != last && taken < room) {
        out[taken++] = ring->coalesced_mmio[first].data[0];
        first = (first + 1) % max;
    }
    __atomic_store_n(&ring->first, first, __ATOMIC_RELEASE);
    return taken;
}

static int pyvmm_newest_coalesced_is_newline(struct kvm_coalesced_mmio_ring *ring)
{
    __u32 last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    __u32 max = pyvmm_coalesced_max();
    if (ring->first == last)
        return 0;
    return ring->coalesced_mmio[(last + max - 1) % max].data[0] == '\n';
}

static int pyvmm_run_uart_fast(pyvmm_uart_fast *fast)
{
    struct kvm_run *run = fast->run;
    for (;;) {
        if (ioctl(fast->fd, KVM_RUN, 0) < 0)
            return -errno;
        if (run->exit_reason != KVM_EXIT_IO || run->io.size != 1 || run->io.count != 1)
            return 0;
        __u8 *data = (__u8 *)run + run->io.data_offset;
        __u16 port = run->io.port;
        int ier_here = __atomic_load_n(fast->ier_valid, __ATOMIC_ACQUIRE);
        __u8 ier = __atomic_load_n(fast->ier, __ATOMIC_ACQUIRE);
        if (run->io.direction == KVM_EXIT_IO_IN && port == fast->lsr_port) {
            if (fast->ring && pyvmm_newest_coalesced_is_newline(fast->ring))
                return 0;
            *data = __atomic_load_n(fast->lsr, __ATOMIC_ACQUIRE);
            fast->lsr_reads++;
        } else if (run->io.direction == KVM_EXIT_IO_IN && port == fast->ier_port && ier_here) {
            *data = ier;
            fast->ier_reads++;
        } else if (run->io.direction == KVM_EXIT_IO_OUT && port == fast->ier_port && ier_here
                   && *data == ier) {
            fast->ier_writes++;
        } else {
            return 0;
        }
    }
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.vcpu._uart_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
