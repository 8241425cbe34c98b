#include "vio.h"
#include "runtime.h"

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_DRIVER 0x090
#define R_QUEUE_DEVICE 0x0a0
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

/* Ring memory: per queue, descriptors at +0, avail at +4096, used at +8192. */
static uint8_t ring_memory[4][3 * 4096] __attribute__((aligned(4096)));
static int rings_used;

static inline void wr(struct vdev *d, unsigned off, uint32_t v)
{
    *(volatile uint32_t *)(uintptr_t)(d->base + off) = v;
}

static inline uint32_t rd(struct vdev *d, unsigned off)
{
    return *(volatile uint32_t *)(uintptr_t)(d->base + off);
}

static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static uint64_t parse_number(const char **p)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        for (;;) {
            char c = *s;
            if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (uint64_t)(c - 'A' + 10);
            else break;
            s++;
        }
    } else {
        while (*s >= '0' && *s <= '9')
            v = v * 10 + (uint64_t)(*s++ - '0');
    }
    if (*s == 'K' || *s == 'k') { v <<= 10; s++; }
    else if (*s == 'M' || *s == 'm') { v <<= 20; s++; }
    *p = s;
    return v;
}

int vio_find(const char *line, uint32_t device_id, struct vdev *dev)
{
    static const char key[] = "virtio_mmio.device=";
    for (const char *p = line; *p; p++) {
        if (p != line && p[-1] != ' ')
            continue;
        size_t i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (key[i])
            continue;
        const char *s = p + i;
        parse_number(&s);           /* size */
        if (*s++ != '@')
            continue;
        uint64_t base = parse_number(&s);
        dev->base = base;
        if (rd(dev, R_MAGIC) == 0x74726976 && rd(dev, R_VERSION) == 2
                && rd(dev, R_DEVICE_ID) == device_id) {
            dev->device_id = device_id;
            return 0;
        }
    }
    return -1;
}

int vio_init(struct vdev *d, uint64_t wanted, int nq)
{
    wr(d, R_STATUS, 0);
    wr(d, R_STATUS, S_ACK);
    wr(d, R_STATUS, S_ACK | S_DRIVER);
    wr(d, R_DEVICE_FEATURES_SEL, 0);
    d->offered = rd(d, R_DEVICE_FEATURES);
    wr(d, R_DEVICE_FEATURES_SEL, 1);
    d->offered |= (uint64_t)rd(d, R_DEVICE_FEATURES) << 32;
    d->features = (wanted & d->offered) | (1ull << VIRTIO_F_VERSION_1);
    wr(d, R_DRIVER_FEATURES_SEL, 0);
    wr(d, R_DRIVER_FEATURES, (uint32_t)d->features);
    wr(d, R_DRIVER_FEATURES_SEL, 1);
    wr(d, R_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd(d, R_STATUS) & S_FEATURES_OK))
        return -1;
    for (int i = 0; i < nq && i < VQ_MAX; i++) {
        struct vq *q = &d->q[i];
        if (rings_used >= 4)
            return -1;
        uint8_t *mem = ring_memory[rings_used++];
        for (unsigned b = 0; b < sizeof ring_memory[0]; b++)
            mem[b] = 0;
        wr(d, R_QUEUE_SEL, (uint32_t)i);
        uint32_t max = rd(d, R_QUEUE_NUM_MAX);
        if (max == 0)
            return -1;
        q->size = (uint16_t)(max < VQ_SIZE ? max : VQ_SIZE);
        q->desc = (volatile struct vq_desc *)mem;
        q->avail = (volatile uint16_t *)(mem + 4096);
        q->used = (volatile uint32_t *)(mem + 8192);
        q->avail_idx = 0;
        q->used_seen = 0;
        q->avail[0] = 1;            /* VRING_AVAIL_F_NO_INTERRUPT: we poll */
        wr(d, R_QUEUE_NUM, q->size);
        wr(d, R_QUEUE_DESC, (uint32_t)(uintptr_t)q->desc);
        wr(d, R_QUEUE_DESC + 4, 0);
        wr(d, R_QUEUE_DRIVER, (uint32_t)(uintptr_t)q->avail);
        wr(d, R_QUEUE_DRIVER + 4, 0);
        wr(d, R_QUEUE_DEVICE, (uint32_t)(uintptr_t)q->used);
        wr(d, R_QUEUE_DEVICE + 4, 0);
        wr(d, R_QUEUE_READY, 1);
    }
    wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    return 0;
}

uint32_t vio_config32(struct vdev *d, unsigned offset)
{
    return rd(d, R_CONFIG + offset);
}

uint64_t vio_config64(struct vdev *d, unsigned offset)
{
    return rd(d, R_CONFIG + offset) | ((uint64_t)rd(d, R_CONFIG + offset + 4) << 32);
}

void vq_set(struct vq *q, uint16_t i, const volatile void *addr, uint32_t len, int writable, int next)
{
    q->desc[i].addr = (uint64_t)(uintptr_t)addr;
    q->desc[i].len = len;
    q->desc[i].flags = (uint16_t)((writable ? VQ_DESC_F_WRITE : 0) | (next >= 0 ? VQ_DESC_F_NEXT : 0));
    q->desc[i].next = (uint16_t)(next >= 0 ? next : 0);
}

void vq_submit_many(struct vdev *d, int qi, const uint16_t *heads, int n)
{
    struct vq *q = &d->q[qi];
    for (int i = 0; i < n; i++) {
        q->avail[2 + (q->avail_idx % q->size)] = heads[i];
        q->avail_idx++;
    }
    barrier();
    q->avail[1] = q->avail_idx;
    barrier();
    wr(d, R_QUEUE_NOTIFY, (uint32_t)qi);
}

void vq_submit(struct vdev *d, int qi, uint16_t head)
{
    vq_submit_many(d, qi, &head, 1);
}

int vq_poll(struct vq *q, uint16_t *head, uint32_t *len)
{
    uint16_t idx = (uint16_t)(q->used[0] >> 16);
    if (idx == q->used_seen)
        return 0;
    barrier();
    volatile uint32_t *elem = &q->used[1 + 2 * (q->used_seen % q->size)];
    *head = (uint16_t)elem[0];
    *len = elem[1];
    q->used_seen++;
    return 1;
}

uint16_t vq_wait(struct vq *q, uint32_t *len)
{
    uint16_t head;
    while (!vq_poll(q, &head, len))
        __asm__ volatile("pause");
    return head;
}
