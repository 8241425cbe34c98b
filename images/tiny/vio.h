/*
 * A minimal virtio-mmio driver (virtio 1.x, version-2 registers) for tiny
 * guests: find a device from virtio_mmio.device=<size>@<base>:<irq> on the
 * command line, negotiate features, set up split queues, submit chains and
 * poll the used ring (no interrupts: VRING_AVAIL_F_NO_INTERRUPT).
 */
#ifndef PYVMM_TINY_VIO_H
#define PYVMM_TINY_VIO_H

#include <stdint.h>
#include <stddef.h>

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_CONSOLE 3
#define VIRTIO_F_VERSION_1 32
#define VQ_SIZE 256
#define VQ_MAX 2

struct vq_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
#define VQ_DESC_F_NEXT 1
#define VQ_DESC_F_WRITE 2

struct vq {
    uint16_t size;
    uint16_t avail_idx;     /* next index we publish */
    uint16_t used_seen;     /* used entries consumed */
    volatile struct vq_desc *desc;
    volatile uint16_t *avail;   /* flags, idx, ring[size], used_event */
    volatile uint32_t *used;    /* (flags|idx<<16), then {id, len} pairs */
};

struct vdev {
    uint64_t base;
    uint32_t device_id;
    uint64_t offered;       /* device features */
    uint64_t features;      /* negotiated */
    struct vq q[VQ_MAX];
};

/* The n-th (0-based) announced device with this ID; 0 when found. */
int vio_find(const char *cmdline, uint32_t device_id, struct vdev *dev);
/* Reset, negotiate (VERSION_1 | wanted & offered), set up nq queues, DRIVER_OK. */
int vio_init(struct vdev *dev, uint64_t wanted, int nq);
uint32_t vio_config32(struct vdev *dev, unsigned offset);
uint64_t vio_config64(struct vdev *dev, unsigned offset);
/* Descriptor i of queue q: set a buffer, chain to next if next >= 0. */
void vq_set(struct vq *q, uint16_t i, const volatile void *addr, uint32_t len, int writable, int next);
/* Make the chain at head available and notify the device. */
void vq_submit(struct vdev *dev, int qi, uint16_t head);
/* Publish several heads, one notification. */
void vq_submit_many(struct vdev *dev, int qi, const uint16_t *heads, int n);
/* Wait for the next used entry; returns its head, stores its length. */
uint16_t vq_wait(struct vq *q, uint32_t *len);
/* Non-blocking: 1 and head/len if an entry is used, else 0. */
int vq_poll(struct vq *q, uint16_t *head, uint32_t *len);

#endif
