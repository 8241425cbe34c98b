"""The split virtqueue in C, device side: one text both C request loops include.

``pyvmm/vhost/_stream_build.py`` (``--net user``'s frames) and
``pyvmm/host/_disk_build.py`` (the raw disk's requests) paste ``RING_CDEF``
into their cdef and ``RING_SOURCE`` into their source, so the rules by which
guest memory is read are written once, and are those of
``pyvmm.devices.virtio.queue``: every descriptor buffer lies inside one RAM
region, a chain (indirect tables included) holds at most the queue's size of
descriptors, an indirect table is neither nested nor chained nor of a bad
length, no readable descriptor follows a writable one.  A broken rule is a
message (``why``) the device turns into DEVICE_NEEDS_RESET.  The rings
themselves were checked inside guest RAM by ``SplitQueue.activate``.
"""

RING_CDEF = r"""
typedef struct {
    uint64_t gpa, size;
    uint8_t *host;
} pyvmm_ram_region;

typedef struct {
    uint8_t *desc, *avail, *used;  /* the rings, checked inside guest RAM by SplitQueue */
    uint32_t size;                 /* entries: a power of two */
    uint16_t next_avail, next_used;
    int event_idx;
} pyvmm_ring;

/* The machine's own way for a serving thread to interrupt the guest, opaque here: a C
   function and its context (pulse == NULL: none).  0 means the guest was interrupted;
   anything else, that the call eventfd (KVM's irqfd) must carry the interrupt instead. */
typedef struct {
    int (*pulse)(void *context);
    void *context;
    uint64_t failures;             /* pulses that failed: the eventfd carried them */
} pyvmm_interrupt;
"""

RING_SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define AVAIL_F_NO_INTERRUPT 1
#define PYVMM_RAM_REGIONS 8

""" + RING_CDEF + r"""

static inline uint16_t ld16(const uint8_t *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE); }
static inline void st16(uint8_t *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

/* Guest RAM as the device may touch it: [gpa, gpa + len) inside one region, or NULL. */
static inline uint8_t *ram_at(const pyvmm_ram_region *regions, uint32_t nregions, uint64_t gpa,
                       uint64_t len)
{
    for (uint32_t i = 0; i < nregions; i++) {
        const pyvmm_ram_region *r = &regions[i];
        if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

/* What a chain's walk does with each buffer (in order; writable ones after readable
   ones); non-zero stops the walk and is returned. */
typedef int (*ring_take_fn)(void *ctx, uint8_t *p, uint32_t len, int writable);

/* Walk the chain at ``index`` of ``table`` (the ring's own table, or an indirect one),
   checked as SplitQueue._walk; ``*count`` counts the chain's descriptors.
   0, the take function's non-zero, or -1 with ``*why`` set. */
static inline int ring_walk_table(const pyvmm_ram_region *regions, uint32_t nregions,
                           const pyvmm_ring *q, const uint8_t *table, uint32_t table_size,
                           uint32_t index, int indirect_allowed, uint32_t *count,
                           int *seen_writable, ring_take_fn take, void *ctx, const char **why)
{
    uint32_t seen = 0;
    for (;;) {
        uint64_t addr; uint32_t len; uint16_t flags, next;
        if (++seen > table_size)
            return *why = "descriptor chain is longer than its table (a loop?)", -1;
        const uint8_t *d = table + 16 * (uint64_t)index;
        memcpy(&addr, d, 8); memcpy(&len, d + 8, 4); memcpy(&flags, d + 12, 2); memcpy(&next, d + 14, 2);
        if (flags & DESC_F_INDIRECT) {
            if (!indirect_allowed || flags & DESC_F_NEXT)
                return *why = "nested or chained indirect descriptor table", -1;
            if (len == 0 || len % 16)
                return *why = "indirect table length is not a multiple of 16", -1;
            if (len / 16 > q->size)
                return *why = "indirect table is larger than the queue", -1;
            const uint8_t *indirect = ram_at(regions, nregions, addr, len);
            if (indirect == NULL)
                return *why = "indirect table outside guest RAM", -1;
            return ring_walk_table(regions, nregions, q, indirect, len / 16, 0, 0, count,
                                   seen_writable, take, ctx, why);
        }
        if (*count >= q->size)
            return *why = "descriptor chain is longer than the queue", -1;
        uint8_t *p = ram_at(regions, nregions, addr, len);
        if (p == NULL)
            return *why = "descriptor buffer outside guest RAM", -1;
        (*count)++;
        if (flags & DESC_F_WRITE)
            *seen_writable = 1;
        else if (*seen_writable)
            return *why = "a device-readable descriptor follows a writable one", -1;
        int taken = take(ctx, p, len, (flags & DESC_F_WRITE) != 0);
        if (taken)
            return taken;
        if (!(flags & DESC_F_NEXT))
            return 0;
        if (next >= table_size)
            return *why = "next descriptor is past the table size", -1;
        index = next;
    }
}

static inline int ring_walk(const pyvmm_ram_region *regions, uint32_t nregions, const pyvmm_ring *q,
                     uint32_t head, ring_take_fn take, void *ctx, const char **why)
{
    uint32_t count = 0;
    int seen_writable = 0;
    return ring_walk_table(regions, nregions, q, q->desc, q->size, head, 1, &count,
                           &seen_writable, take, ctx, why);
}

/* The next available chain's head (-1: none), checked as SplitQueue.pop; -2 with *why. */
static inline int ring_pop(pyvmm_ring *q, const char **why)
{
    uint16_t avail_idx = ld16(q->avail + 2);
    if (avail_idx == q->next_avail)
        return -1;
    if ((uint16_t)(avail_idx - q->next_avail) > q->size)
        return *why = "available index ran more than the queue size ahead", -2;
    uint16_t head = ld16(q->avail + 4 + 2 * (q->next_avail % q->size));
    q->next_avail++;
    if (head >= q->size)
        return *why = "descriptor head is past the queue size", -2;
    return head;
}

static inline int has_available(pyvmm_ring *q) { return ld16(q->avail + 2) != q->next_avail; }

static inline void add_used(pyvmm_ring *q, uint32_t head, uint32_t len)
{
    uint8_t *e = q->used + 4 + 8 * (uint64_t)(q->next_used % q->size);
    memcpy(e, &head, 4);
    memcpy(e + 4, &len, 4);
    q->next_used++;
}

static inline void publish_used(pyvmm_ring *q) { st16(q->used + 2, q->next_used); }

static inline void set_avail_event(pyvmm_ring *q)
{
    if (q->event_idx) {
        st16(q->used + 4 + 8 * q->size, q->next_avail);
        full_fence();
    }
}

static inline int ask_for_next(pyvmm_ring *q)
{
    if (!q->event_idx)
        return 0;
    uint16_t seen = ld16(q->avail + 2);
    st16(q->used + 4 + 8 * q->size, seen);
    full_fence();
    return ld16(q->avail + 2) != seen;
}

static inline int needs_interrupt(pyvmm_ring *q, uint16_t used_before)
{
    if (q->next_used == used_before)
        return 0;
    full_fence();
    if (q->event_idx) {
        uint16_t used_event = ld16(q->avail + 4 + 2 * q->size);
        return (uint16_t)(q->next_used - used_event - 1) < (uint16_t)(q->next_used - used_before);
    }
    return !(ld16(q->avail) & AVAIL_F_NO_INTERRUPT);
}

static inline void drain_eventfd(int fd)
{
    uint64_t value;
    if (read(fd, &value, 8) < 0) { /* nothing was there */ }
}

static inline int signal_eventfd(int fd)
{
    uint64_t one = 1;
    return write(fd, &one, 8) == 8 ? 0 : -1;
}

/* Interrupt the guest: the machine's pulse where it gave one (KVM_IRQ_LINE from this
   thread: the vCPU is woken here, not by a kworker as an irqfd on an IOAPIC line
   is), else, or if it failed, the call eventfd. */
static inline void raise_interrupt(pyvmm_interrupt *irq, int call_fd)
{
    if (irq->pulse != NULL) {
        if (irq->pulse(irq->context) == 0)
            return;
        irq->failures++;
    }
    signal_eventfd(call_fd);
}
"""
