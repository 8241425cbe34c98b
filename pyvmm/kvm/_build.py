"""cffi build script for the KVM binding (API, out-of-line mode).

Compiled at install time against the host's ``<linux/kvm.h>``: the C compiler
fills in every struct layout and ioctl number below (``...`` means "ask the
header"), so nothing here is a hand-counted offset.  The only hand-written code
is a pair of ioctl wrappers that return ``-errno`` (cffi releases the GIL
around them, so a vCPU thread blocked in ``KVM_RUN`` doesn't stop the others),
and the UART fast path: a KVM_RUN loop that answers the 8250's line-status
polls itself, and the coalesced-I/O ring reader (pyvmm.vcpu.uart_fastpath).
"""

from __future__ import annotations

import cffi

# The UART fast path's argument block, shared by Python (through cffi) and the C
# loop: its one declaration, used in both the cdef and the C source below.
UART_FAST_STRUCT = r"""
typedef struct {
    int fd;
    struct kvm_run *run;
    struct kvm_coalesced_mmio_ring *ring;
    const __u8 *cells;
    __u16 base;
    __u64 served[3];
} pyvmm_uart_fast;
"""

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

/* ioctl numbers */
#define KVM_API_VERSION ...
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_IRQ_LINE ...
#define KVM_IOEVENTFD ...
#define KVM_IRQFD ...
#define KVM_CREATE_VCPU ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_SET_FPU ...
#define KVM_SET_MSRS ...
#define KVM_GET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_REGISTER_COALESCED_MMIO ...
#define KVM_UNREGISTER_COALESCED_MMIO ...
#define KVM_COALESCED_MMIO_PAGE_OFFSET ...
#define KVM_GET_FPU ...
#define KVM_SET_GUEST_DEBUG ...

/* capabilities */
#define KVM_CAP_COALESCED_MMIO ...
#define KVM_CAP_COALESCED_PIO ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_HLT ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_NR_MEMSLOTS ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_TSC_DEADLINE_TIMER ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_SET_GUEST_DEBUG ...

/* exit reasons and their details */
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ...
#define KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES ...
#define KVM_SYSTEM_EVENT_SHUTDOWN ...
#define KVM_SYSTEM_EVENT_RESET ...
#define KVM_SYSTEM_EVENT_CRASH ...

/* flags */
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_MP_STATE_RUNNABLE ...
#define KVM_MP_STATE_UNINITIALIZED ...
#define KVM_GUESTDBG_ENABLE ...
#define KVM_GUESTDBG_SINGLESTEP ...
#define KVM_GUESTDBG_USE_SW_BP ...
#define KVM_GUESTDBG_USE_HW_BP ...
#define KVM_GUESTDBG_BLOCKIRQ ...

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    ...;
};

/* The members of kvm_run's anonymous exit union, named by the C side. */
typedef struct { __u64 hardware_exit_reason; ...; } pyvmm_exit_hw;
typedef struct { __u64 hardware_entry_failure_reason; __u32 cpu; ...; } pyvmm_exit_fail_entry;
typedef struct { __u32 exception; __u32 error_code; ...; } pyvmm_exit_ex;
typedef struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; ...; } pyvmm_exit_io;
typedef struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; ...; } pyvmm_exit_mmio;
typedef struct { __u32 suberror; __u32 ndata; __u64 data[16]; ...; } pyvmm_exit_internal;
typedef struct { __u32 suberror; __u32 ndata; __u64 flags; __u8 insn_size; __u8 insn_bytes[15]; ...; } pyvmm_exit_emulation_failure;
typedef struct { __u32 type; __u32 ndata; __u64 data[16]; ...; } pyvmm_exit_system_event;
/* KVM_EXIT_DEBUG: the exception (1 #DB, 3 #BP), where, and DR6/DR7 then. */
typedef struct { __u32 exception; __u64 pc; __u64 dr6; __u64 dr7; ...; } pyvmm_exit_debug;
#define PYVMM_KVM_RUN_EXIT_OFFSET ...

struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
};
struct kvm_pit_config { __u32 flags; ...; };
struct kvm_irq_level { __u32 irq; __u32 level; ...; };
struct kvm_ioeventfd { __u64 datamatch; __u64 addr; __u32 len; int fd; __u32 flags; ...; };
struct kvm_irqfd { __u32 fd; __u32 gsi; __u32 flags; __u32 resamplefd; ...; };

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector;
    __u8 type; __u8 present, dpl, db, s, l, g, avl; __u8 unusable; ...;
};
struct kvm_dtable { __u64 base; __u16 limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[...];
};
struct kvm_fpu {
    __u8 fpr[8][16]; __u16 fcw; __u16 fsw; __u8 ftwx; __u16 last_opcode;
    __u64 last_ip; __u64 last_dp; __u8 xmm[16][16]; __u32 mxcsr; ...;
};
struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };
struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags;
    __u32 eax; __u32 ebx; __u32 ecx; __u32 edx; ...;
};
struct kvm_cpuid2 { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_lapic_state { char regs[...]; };
struct kvm_mp_state { __u32 mp_state; };
/* KVM_SET_GUEST_DEBUG: what KVM intercepts for a debugger, and DR0-DR3, DR7. */
struct kvm_guest_debug_arch { __u64 debugreg[8]; };
struct kvm_guest_debug { __u32 control; struct kvm_guest_debug_arch arch; ...; };

/* struct kvm_vcpu_events: only the pending/injected exception is used. */
typedef struct { __u8 injected; __u8 nr; __u8 has_error_code; __u8 pending;
                 __u32 error_code; } pyvmm_events_exception;
struct kvm_vcpu_events { pyvmm_events_exception exception; __u32 flags; ...; };

/* Coalesced MMIO/PIO: zones whose writes KVM queues in a ring page instead of exiting. */
struct kvm_coalesced_mmio_zone { __u64 addr; __u32 size; __u32 pio; ...; };
struct kvm_coalesced_mmio { __u64 phys_addr; __u32 len; __u32 pio; __u8 data[8]; ...; };
struct kvm_coalesced_mmio_ring { __u32 first; __u32 last; ...; };
int pyvmm_coalesced_drain(struct kvm_coalesced_mmio_ring *ring, __u8 *out, int room);

/* The UART fast path (one per vCPU): KVM_RUN until an exit it can't answer from
   cells[] (the UART's published registers, see pyvmm.devices.serial): a 1-byte
   read of LSR (base+5), a read of IER (base+1) or a write of the value IER
   already has (a no-op) while cells[2] says IER is at base+1 (DLAB clear).
   It returns 0 for any other exit, and for an LSR read when the newest
   coalesced write is a newline (so the line goes out now); -errno when KVM_RUN
   fails (EINTR: kicked).  served[] counts LSR reads, IER reads, IER writes. */
""" + UART_FAST_STRUCT + r"""
int pyvmm_run_uart_fast(pyvmm_uart_fast *fast);

int pyvmm_ioctl(int fd, unsigned long request, void *arg);
int pyvmm_ioctl_value(int fd, unsigned long request, unsigned long arg);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

typedef __typeof__(((struct kvm_run *)0)->hw) pyvmm_exit_hw;
typedef __typeof__(((struct kvm_run *)0)->fail_entry) pyvmm_exit_fail_entry;
typedef __typeof__(((struct kvm_run *)0)->ex) pyvmm_exit_ex;
typedef __typeof__(((struct kvm_run *)0)->io) pyvmm_exit_io;
typedef __typeof__(((struct kvm_run *)0)->mmio) pyvmm_exit_mmio;
typedef __typeof__(((struct kvm_run *)0)->internal) pyvmm_exit_internal;
typedef __typeof__(((struct kvm_run *)0)->emulation_failure) pyvmm_exit_emulation_failure;
typedef __typeof__(((struct kvm_run *)0)->system_event) pyvmm_exit_system_event;
typedef __typeof__(((struct kvm_run *)0)->debug.arch) pyvmm_exit_debug;
typedef __typeof__(((struct kvm_vcpu_events *)0)->exception) pyvmm_events_exception;
/* Every exit member shares the union's offset. */
#define PYVMM_KVM_RUN_EXIT_OFFSET offsetof(struct kvm_run, io)

static int pyvmm_ioctl(int fd, unsigned long request, void *arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

static int pyvmm_ioctl_value(int fd, unsigned long request, unsigned long arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

/* Slots in the ring page (the kernel's KVM_COALESCED_MMIO_MAX, which needs PAGE_SIZE). */
static __u32 pyvmm_coalesced_max(void)
{
    return (sysconf(_SC_PAGESIZE) - sizeof(struct kvm_coalesced_mmio_ring))
           / sizeof(struct kvm_coalesced_mmio);
}

/* Single consumer (the caller serialises): read 'last' before the entries, free
   the slots only after copying them (the kernel's producer side pairs these).
   Each entry is a 1-byte write to the one coalesced port: its byte goes to out. */
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

""" + UART_FAST_STRUCT + r"""
enum { PYVMM_CELL_LSR, PYVMM_CELL_IER, PYVMM_CELL_IER_VALID };

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
        int ier_here = __atomic_load_n(&fast->cells[PYVMM_CELL_IER_VALID], __ATOMIC_ACQUIRE);
        __u8 ier = __atomic_load_n(&fast->cells[PYVMM_CELL_IER], __ATOMIC_ACQUIRE);
        if (run->io.direction == KVM_EXIT_IO_IN && port == fast->base + 5) {
            if (fast->ring && pyvmm_newest_coalesced_is_newline(fast->ring))
                return 0;
            *data = __atomic_load_n(&fast->cells[PYVMM_CELL_LSR], __ATOMIC_ACQUIRE);
            fast->served[0]++;
        } else if (run->io.direction == KVM_EXIT_IO_IN && port == fast->base + 1 && ier_here) {
            *data = ier;
            fast->served[1]++;
        } else if (run->io.direction == KVM_EXIT_IO_OUT && port == fast->base + 1 && ier_here
                   && *data == ier) {
            fast->served[2]++;
        } else {
            return 0;
        }
    }
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.kvm._kvm_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
