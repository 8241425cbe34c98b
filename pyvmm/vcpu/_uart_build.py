"""cffi build script for the UART fast path's C half (API, out-of-line mode).

For ``pyvmm.vcpu.uart_fastpath``, its one user: the registers of COM1 that
Linux's 8250 driver hammers, served in C on the Serial's own state (THR
writes, RBR/IIR/LSR/MSR/IER reads, IER writes, the THR-empty interrupt through
KVM_IRQ_LINE), a KVM_RUN loop that serves them without returning to Python,
and the reader of KVM's coalesced-I/O ring.  They are a module of their own,
beside the code that uses them: the KVM binding knows nothing of a UART, it
hands over the vCPU's fd, its kvm_run mapping and the ring page (as
addresses).  Compiled at install time against the host's ``<linux/kvm.h>``
and ``<linux/serial_reg.h>`` (the register bits, as Linux names them):
``...`` lets the compiler fill in the layouts, nothing is a hand-counted
offset.  cffi releases the GIL around each call, so a vCPU in the loop stops
no other, and a Python thread waiting for the UART's lock holds no GIL.

The same loop answers the InterruptStatus reads of the virtio-mmio windows
whose interrupts a vhost back end raises (``pyvmm_status_read``, a table of
words ``pyvmm.vcpu.interrupt_status`` keeps): with COM1's registers all
Python's (``PYVMM_UART_FASTPATH``), it runs for those alone.
"""

from __future__ import annotations

import cffi

# Declared once, used in both the cdef and the C source below.
# The UART's state as pyvmm.devices.serial.Serial keeps it in ``Serial.state``
# (its ST_* offsets; tests compare them with these fields).
UART_STATE_STRUCT = r"""
typedef struct {
    __u8 ier, lcr, mcr, lsr, msr, scr;
    __u8 fifo;                              /* FIFOs enabled */
    __u8 thre;                              /* the THR-empty interrupt's latch */
    __u8 irq;                               /* the line's level as last driven */
    __u8 rx;                                /* received bytes wait */
    __u8 dll, dlm;
    __u32 tx_len;                           /* bytes waiting in Serial.tx */
    __u32 rx_head;                          /* the next byte for the guest in Serial.rx */
    __u32 rx_len;                           /* bytes waiting there (a ring) */
} pyvmm_uart_state;
"""

#: Virtio-mmio windows whose InterruptStatus the loop may answer (pyvmm has 9 IRQ lines).
STATUS_WINDOWS = 16

# The InterruptStatus registers of the virtio-mmio devices whose interrupts another
# party raises through an irqfd (vhost): shared by every vCPU's loop, kept by Python.
STATUS_TABLE_STRUCT = r"""
typedef struct {
    __u32 count;                            /* windows in use, filled in order */
    __u32 status[%(n)d];                    /* what a read of each returns */
    __u64 addr[%(n)d];                      /* each register's guest-physical address */
} pyvmm_status_table;
""" % {"n": STATUS_WINDOWS}

# One vCPU's loop: its KVM_RUN arguments and what it served, per register.
UART_FAST_STRUCT = r"""
typedef struct {
    int fd;                                 /* the vCPU's */
    struct kvm_run *run;                    /* its kvm_run mapping */
    struct kvm_coalesced_mmio_ring *ring;   /* NULL unless THR writes may be coalesced */
    pyvmm_uart *uart;                       /* NULL: COM1's registers are all Python's */
    __u16 base_port;
    __u64 served_in[8];                     /* accesses answered, by register offset */
    __u64 served_out[8];
    __u8 thr_outran;                        /* the exit it returned with is a THR write left
                                               to Python only because the guest's output
                                               outran its drain (back-pressure) */
    pyvmm_status_table *status;             /* NULL: no InterruptStatus read answered here */
    __u64 status_reads[%(n)d];              /* InterruptStatus reads answered, by window */
} pyvmm_uart_fast;
""" % {"n": STATUS_WINDOWS}

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

/* Copy up to room queued writes' bytes to out, oldest first; returns how many.
   Each entry is a 1-byte write to the one coalesced port (THR).  Their slots
   stay taken until pyvmm_coalesced_free: free them once the bytes are the
   UART's, so that an empty ring means every coalesced write has reached it
   (the C loop and a vCPU thread look, then write THR themselves).  Single
   consumer: the caller serialises. */
int pyvmm_coalesced_copy(struct kvm_coalesced_mmio_ring *ring, __u8 *out, int room);
/* Free the count oldest slots (count from pyvmm_coalesced_copy). */
void pyvmm_coalesced_free(struct kvm_coalesced_mmio_ring *ring, int count);
""" + UART_STATE_STRUCT + r"""
/* One UART, shared by every vCPU's loop and by Python: the Serial's state and
   output buffer, the lock both sides take (a pthread mutex, after these
   fields), the line. */
typedef struct {
    pyvmm_uart_state *state;
    __u8 *tx;                   /* Serial.tx */
    __u32 tx_capacity;
    __u8 *rx;                   /* Serial.rx: the input ring */
    __u32 rx_capacity;
    int vm_fd;                  /* KVM_IRQ_LINE goes there; -1: none (tests, or closed) */
    __u32 gsi;
    int wake_fd;                /* an eventfd written when output starts waiting, and at
                                   each newline; -1: none */
    int irq_errno;              /* the first KVM_IRQ_LINE failure the loop met */
    int coalescing;             /* THR writes are coalesced now: the IER writes that turn
                                   the THR-empty interrupt on are Python's (it stops that) */
    __u32 coalesce_after;       /* polled THR writes served here in a row after which to
                                   ask Python to coalesce again (0: never) */
    __u32 polled_writes;        /* ... counted so far */
    __u64 irq_changes;          /* times the line was driven */
    ...;
} pyvmm_uart;

int pyvmm_uart_init(pyvmm_uart *uart);     /* the lock: 0 or -errno */
void pyvmm_uart_lock(pyvmm_uart *uart);
void pyvmm_uart_unlock(pyvmm_uart *uart);

/* Drive the line to level (lock held): 0, or -errno of KVM_IRQ_LINE. */
int pyvmm_uart_drive_irq(pyvmm_uart *uart, int level);

/* One 1-byte access at register offset (0..7), served as Serial would serve it
   if it is one this side serves: a THR write while tx has room (no divisor
   latch, no loopback), RBR reads (no divisor latch: the next byte of the input
   ring, 0 when it is empty), IIR and LSR reads, MSR reads outside loopback, IER reads
   and IER writes (no divisor latch; while coalescing, not those that turn the
   THR-empty interrupt on).  Returns 1 if served (a read's value in *data),
   PYVMM_UART_COALESCE if served and coalesce_after polled THR writes came in a
   row, 0 if Python must serve it.  Takes the lock. */
int pyvmm_uart_access(pyvmm_uart *uart, int offset, int write, __u8 *data);
""" + STATUS_TABLE_STRUCT + UART_FAST_STRUCT + r"""
/* The loop's decision for one 1-byte port access: pyvmm_uart_access's answer,
   counted.  Besides what that declines: a THR write while the ring holds older
   writes (Python applies those first), and any THR write while they are
   coalesced (one reaches user space only when KVM's ring was full: the
   guest's output outran the drain, and Python waits for it).  A THR write left
   to Python for either, or because tx was full, sets thr_outran.  An LSR read
   when the newest coalesced write is a newline wakes the event loop (once per
   newline), which drains the ring and writes the line out; with no loop to
   wake, it is Python's. */
int pyvmm_uart_fast_io(pyvmm_uart_fast *fast, __u16 port, int write, __u8 *data);

/* A 4-byte MMIO read at addr: 1 if it is an InterruptStatus register of fast->status
   (the value in data, counted), else 0. */
int pyvmm_status_read(pyvmm_uart_fast *fast, __u64 addr, __u32 len, __u8 *data);

/* KVM_RUN until an exit neither pyvmm_uart_fast_io nor pyvmm_status_read serves (left in kvm_run
   for Python: returns 0); -errno when KVM_RUN fails (EINTR: kicked);
   PYVMM_UART_IRQ_FAILED when an access it served could not drive the line
   (the errno in uart->irq_errno); PYVMM_UART_COALESCE after serving the
   polled THR write that asks for coalescing. */
#define PYVMM_UART_IRQ_FAILED ...
#define PYVMM_UART_COALESCE ...
int pyvmm_run_uart_fast(pyvmm_uart_fast *fast);
"""

SOURCE = r"""
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>
#include <linux/serial_reg.h>

#define PYVMM_UART_IRQ_FAILED 1
#define PYVMM_UART_COALESCE 2
#define PYVMM_IIR_FIFO_ENABLED 0xc0     /* IIR bits 6-7 while the FIFOs are on (16550A) */
#define PYVMM_IER_MASK 0x0f

""" + UART_STATE_STRUCT + r"""
typedef struct {
    pyvmm_uart_state *state;
    __u8 *tx;
    __u32 tx_capacity;
    __u8 *rx;
    __u32 rx_capacity;
    int vm_fd;
    __u32 gsi;
    int wake_fd;
    int irq_errno;
    int coalescing;
    __u32 coalesce_after;
    __u32 polled_writes;
    __u64 irq_changes;
    __u32 ring_woken;           /* the ring's 'last' when a newline last woke the loop */
    pthread_mutex_t lock;
} pyvmm_uart;
""" + STATUS_TABLE_STRUCT + UART_FAST_STRUCT + r"""

/* Slots in the ring page (the kernel's KVM_COALESCED_MMIO_MAX, which needs PAGE_SIZE). */
static __u32 pyvmm_coalesced_max(void)
{
    return (sysconf(_SC_PAGESIZE) - sizeof(struct kvm_coalesced_mmio_ring))
           / sizeof(struct kvm_coalesced_mmio);
}

/* Read 'last' before the entries (the kernel's producer side pairs this). */
static int pyvmm_coalesced_copy(struct kvm_coalesced_mmio_ring *ring, __u8 *out, int room)
{
    __u32 max = pyvmm_coalesced_max();
    __u32 first = ring->first;
    __u32 last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    int taken = 0;
    while (first != last && taken < room) {
        out[taken++] = ring->coalesced_mmio[first].data[0];
        first = (first + 1) % max;
    }
    return taken;
}

/* After the copied bytes were used: the producer may reuse the slots, and a
   reader that finds the ring empty finds those bytes in the UART. */
static void pyvmm_coalesced_free(struct kvm_coalesced_mmio_ring *ring, int count)
{
    __atomic_store_n(&ring->first, (ring->first + count) % pyvmm_coalesced_max(),
                     __ATOMIC_RELEASE);
}

static int pyvmm_coalesced_pending(struct kvm_coalesced_mmio_ring *ring)
{
    return __atomic_load_n(&ring->first, __ATOMIC_ACQUIRE)
           != __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
}

static int pyvmm_newest_coalesced_is_newline(struct kvm_coalesced_mmio_ring *ring)
{
    __u32 last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
    __u32 max = pyvmm_coalesced_max();
    if (ring->first == last)
        return 0;
    return ring->coalesced_mmio[(last + max - 1) % max].data[0] == '\n';
}

static int pyvmm_uart_init(pyvmm_uart *uart)
{
    return -pthread_mutex_init(&uart->lock, NULL);
}

static void pyvmm_uart_lock(pyvmm_uart *uart)
{
    pthread_mutex_lock(&uart->lock);
}

static void pyvmm_uart_unlock(pyvmm_uart *uart)
{
    pthread_mutex_unlock(&uart->lock);
}

static int pyvmm_uart_drive_irq(pyvmm_uart *uart, int level)
{
    uart->irq_changes++;
    if (uart->vm_fd < 0)
        return 0;
    struct kvm_irq_level line = { .irq = uart->gsi, .level = level };
    if (ioctl(uart->vm_fd, KVM_IRQ_LINE, &line) < 0) {
        if (!uart->irq_errno)
            uart->irq_errno = errno;
        return -errno;
    }
    return 0;
}

/* Serial._interrupt_identification */
static __u8 pyvmm_uart_iir(const pyvmm_uart_state *s)
{
    if (s->ier & UART_IER_RLSI && s->lsr & UART_LSR_OE)
        return UART_IIR_RLSI;
    if (s->ier & UART_IER_RDI && s->rx)
        return UART_IIR_RDI;
    if (s->ier & UART_IER_THRI && s->thre)
        return UART_IIR_THRI;
    if (s->ier & UART_IER_MSI && s->msr & UART_MSR_ANY_DELTA)
        return UART_IIR_MSI;
    return UART_IIR_NO_INT;
}

/* Serial._update_interrupt */
static void pyvmm_uart_update_irq(pyvmm_uart *uart)
{
    __u8 level = pyvmm_uart_iir(uart->state) != UART_IIR_NO_INT;
    if (level != uart->state->irq) {
        uart->state->irq = level;
        pyvmm_uart_drive_irq(uart, level);
    }
}

/* The accesses Serial._write_register would serve the same way (1, or
   PYVMM_UART_COALESCE); 0 for the others, *tx_full set for a THR write that
   found no room in tx. */
static int pyvmm_uart_write(pyvmm_uart *uart, int offset, __u8 value, int *tx_full)
{
    pyvmm_uart_state *s = uart->state;
    if (s->lcr & UART_LCR_DLAB)
        return 0;
    if (offset == UART_TX) {
        if (s->mcr & UART_MCR_LOOP)
            return 0;
        if (s->tx_len >= uart->tx_capacity) {
            *tx_full = 1;
            return 0;
        }
        s->thre = 1;  /* the byte leaves at once: THR is empty again */
        uart->tx[s->tx_len++] = value;
        /* Python looks at output that starts waiting, and flushes a line now. */
        if ((s->tx_len == 1 || value == '\n') && uart->wake_fd >= 0) {
            __u64 one = 1;
            (void)!write(uart->wake_fd, &one, sizeof one);
        }
        /* Polled output (printk's console) flowing: KVM may queue it instead. */
        if (!(s->ier & UART_IER_THRI) && uart->coalesce_after
                && ++uart->polled_writes >= uart->coalesce_after) {
            uart->polled_writes = 0;
            return PYVMM_UART_COALESCE;
        }
        return 1;
    }
    if (offset == UART_IER) {
        /* THR writes must exit once the THR-empty interrupt is on: Python stops
           coalescing them first. */
        int enabling_thre = value & UART_IER_THRI && !(s->ier & UART_IER_THRI);
        if (enabling_thre && uart->coalescing)
            return 0;
        if (enabling_thre) {
            s->thre = 1;
            uart->polled_writes = 0;
        }
        s->ier = value & PYVMM_IER_MASK;
        return 1;
    }
    return 0;
}

/* The reads Serial._read_register would serve the same way; 0 for the others. */
static int pyvmm_uart_read(pyvmm_uart *uart, int offset, __u8 *data)
{
    pyvmm_uart_state *s = uart->state;
    switch (offset) {
    case UART_RX:
        if (s->lcr & UART_LCR_DLAB)
            return 0;
        if (!s->rx_len || !uart->rx_capacity) {
            *data = 0;
            return 1;
        }
        *data = uart->rx[s->rx_head];
        s->rx_head = (s->rx_head + 1) % uart->rx_capacity;
        s->rx = --s->rx_len != 0;
        return 1;
    case UART_IIR: {
        __u8 iir = pyvmm_uart_iir(s);
        if (iir == UART_IIR_THRI)
            s->thre = 0;  /* reading IIR acknowledges THRE */
        *data = iir | (s->fifo ? PYVMM_IIR_FIFO_ENABLED : 0);
        return 1;
    }
    case UART_LSR:
        *data = s->lsr | (s->rx ? UART_LSR_DR : 0);
        s->lsr &= ~UART_LSR_OE;
        return 1;
    case UART_MSR:
        if (s->mcr & UART_MCR_LOOP)
            return 0;
        *data = s->msr;
        s->msr &= ~UART_MSR_ANY_DELTA;
        return 1;
    case UART_IER:
        if (s->lcr & UART_LCR_DLAB)
            return 0;
        *data = s->ier;
        return 1;
    }
    return 0;
}

/* pyvmm_uart_access, and whether a THR write it declined found tx full (seen
   under the lock: the event loop may flush tx as soon as it is released). */
static int pyvmm_uart_serve(pyvmm_uart *uart, int offset, int write, __u8 *data,
                            int *tx_full)
{
    pthread_mutex_lock(&uart->lock);
    int served = write ? pyvmm_uart_write(uart, offset, *data, tx_full)
                       : pyvmm_uart_read(uart, offset, data);
    if (served)
        pyvmm_uart_update_irq(uart);
    pthread_mutex_unlock(&uart->lock);
    return served;
}

static int pyvmm_uart_access(pyvmm_uart *uart, int offset, int write, __u8 *data)
{
    int tx_full = 0;
    return pyvmm_uart_serve(uart, offset, write, data, &tx_full);
}

/* A polled line is complete in the ring: wake the event loop to write it out
   (once per newline); 0 if there is no loop to wake. */
static int pyvmm_uart_wake_for_ring(pyvmm_uart *uart, struct kvm_coalesced_mmio_ring *ring)
{
    int woke = 0;
    pthread_mutex_lock(&uart->lock);
    if (uart->wake_fd >= 0) {
        __u32 last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
        if (uart->ring_woken != last) {
            __u64 one = 1;
            (void)!write(uart->wake_fd, &one, sizeof one);
            uart->ring_woken = last;
        }
        woke = 1;
    }
    pthread_mutex_unlock(&uart->lock);
    return woke;
}

static int pyvmm_uart_fast_io(pyvmm_uart_fast *fast, __u16 port, int write, __u8 *data)
{
    if (!fast->uart || port < fast->base_port || port > fast->base_port + 7)
        return 0;
    int offset = port - fast->base_port;
    if (fast->ring) {
        if (write && offset == UART_TX && (pyvmm_coalesced_pending(fast->ring)
                || __atomic_load_n(&fast->uart->coalescing, __ATOMIC_ACQUIRE))) {
            fast->thr_outran = 1;
            return 0;
        }
        if (!write && offset == UART_LSR && pyvmm_newest_coalesced_is_newline(fast->ring)
                && !pyvmm_uart_wake_for_ring(fast->uart, fast->ring))
            return 0;
    }
    int tx_full = 0;
    int served = pyvmm_uart_serve(fast->uart, offset, write, data, &tx_full);
    if (served)
        (write ? fast->served_out : fast->served_in)[offset]++;
    fast->thr_outran = !served && tx_full;
    return served;
}

/* Python stores each status word (an aligned 32-bit store) before it raises the
   interrupt a read should see, and fills a window's address before counting it in. */
static int pyvmm_status_read(pyvmm_uart_fast *fast, __u64 addr, __u32 len, __u8 *data)
{
    pyvmm_status_table *table = fast->status;
    if (!table || len != 4)
        return 0;
    __u32 count = __atomic_load_n(&table->count, __ATOMIC_ACQUIRE);
    for (__u32 i = 0; i < count && i < sizeof table->addr / sizeof table->addr[0]; i++) {
        if (table->addr[i] == addr) {
            __u32 status = __atomic_load_n(&table->status[i], __ATOMIC_ACQUIRE);
            memcpy(data, &status, sizeof status);
            fast->status_reads[i]++;
            return 1;
        }
    }
    return 0;
}

static int pyvmm_run_uart_fast(pyvmm_uart_fast *fast)
{
    struct kvm_run *run = fast->run;
    for (;;) {
        if (ioctl(fast->fd, KVM_RUN, 0) < 0)
            return -errno;
        fast->thr_outran = 0;
        if (run->exit_reason == KVM_EXIT_MMIO && !run->mmio.is_write) {
            if (!pyvmm_status_read(fast, run->mmio.phys_addr, run->mmio.len, run->mmio.data))
                return 0;
            continue;
        }
        if (run->exit_reason != KVM_EXIT_IO || run->io.size != 1 || run->io.count != 1)
            return 0;
        __u8 *data = (__u8 *)run + run->io.data_offset;
        int served = pyvmm_uart_fast_io(fast, run->io.port,
                                        run->io.direction == KVM_EXIT_IO_OUT, data);
        if (!served)
            return 0;
        if (__atomic_load_n(&fast->uart->irq_errno, __ATOMIC_RELAXED))
            return PYVMM_UART_IRQ_FAILED;
        if (served == PYVMM_UART_COALESCE)
            return PYVMM_UART_COALESCE;
    }
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.vcpu._uart_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
