"""cffi build script for the raw disk's request loop: virtio-blk requests served in C.

For ``pyvmm.devices.virtio.block.BlockDevice`` over a ``DiskImage`` (a raw
file or block device).  Python per request was the floor of the in-process
disk (in the rig, where Python runs emulated, it trailed QEMU's raw disk on
some figures), so requests never reach Python:

- ``pyvmm_blk_process`` walks every available chain (the ring rules of
  ``_virtq_source.py``), parses it as ``block.parse_request`` does, and runs
  it: ``preadv`` / ``pwritev`` straight between the image's fd and guest RAM
  (through an aligned bounce buffer when O_DIRECT refuses the guest's
  buffers, as ``DiskImage`` does), ``fdatasync`` for a flush, GET_ID from the
  serial, discard and write-zeroes by ``fallocate`` (zeros written where the
  filesystem can't), then the status byte.  The used index is published once
  per pass and the interrupt asked for once (EVENT_IDX or NO_INTERRUPT);
- every limit the device advertises is enforced here, as ``block.py`` says
  them (passed in, declared once there): seg_max and size_max over a
  request's data, the sectors inside the image, read-only, one discard
  segment of bounded size; a pass stops after a queue's worth of requests or
  its time budget;
- ``pyvmm_blk_serve`` is a loop for a thread of its own (cffi releases the
  GIL): poll over the kick eventfd (KVM's ioeventfd) and a stop eventfd, the
  interrupt the machine's pulse function where it gave one (KVM_IRQ_LINE made
  by this thread), else an eventfd write (KVM's irqfd).  The device sees
  eventfds and an opaque C function, never KVM.

A malformed ring is an error whose message the device turns into
DEVICE_NEEDS_RESET; a request the guest got wrong, or a host I/O error, is a
status byte.  No host memory outside guest RAM and the bounce buffer is read
or written.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import cffi

# By path, not by import: a build (pip's isolated one) need not have pyvmm on sys.path.
_RING = runpy.run_path(str(Path(__file__).resolve().parent / "_virtq_source.py"))
RING_CDEF: str = _RING["RING_CDEF"]
RING_SOURCE: str = _RING["RING_SOURCE"]

BLK_CDEF = r"""
typedef struct {
    pyvmm_ram_region regions[8];
    uint32_t nregions;
    pyvmm_ring q;
    int fd, readonly;
    uint64_t size;                 /* bytes the guest sees: whole sectors */
    uint8_t serial[20];            /* GET_ID's answer, NUL-padded */
    uint8_t *bounce;               /* page-aligned, for O_DIRECT; NULL if not direct */
    uint32_t bounce_size;
    /* block.py's limits */
    uint32_t seg_max, size_max, max_discard_sectors, max_write_zeroes_sectors;
    uint64_t budget_ns;            /* most time one pass spends */
    int kick_fd, call_fd, stop_fd; /* eventfds, for pyvmm_blk_serve */
    pyvmm_interrupt irq;           /* the machine's direct interrupt, before call_fd */
    uint64_t requests, wakeups, interrupts, io_errors;
    int last_errno;                /* of the last host I/O error */
    char error[200];
} pyvmm_blk;

#define PYVMM_BLK_INTERRUPT 1
#define PYVMM_BLK_MORE 2
#define PYVMM_BLK_ERROR 4
#define PYVMM_BLK_STOPPED 8

int pyvmm_blk_process(pyvmm_blk *b);
int pyvmm_blk_serve(pyvmm_blk *b);
"""
CDEF = RING_CDEF + BLK_CDEF

SOURCE = r"""
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/uio.h>
""" + RING_SOURCE + BLK_CDEF + r"""

#define SECTOR 512
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2
#define WRITE_ZEROES_FLAG_UNMAP 1
#define MAX_CHAIN 1024             /* descriptors in a chain: at most the queue's size */
#define ZEROS 65536

static const uint8_t zeros[ZEROS] __attribute__((aligned(4096)));

/* One chain's buffers, readable ones first (as the walk gives them). */
typedef struct {
    struct iovec readable[MAX_CHAIN], writable[MAX_CHAIN];
    uint32_t nreadable, nwritable;
} chain;

static int take(void *ctx, uint8_t *p, uint32_t len, int writable)
{
    chain *c = ctx;
    struct iovec *v = writable ? &c->writable[c->nwritable++] : &c->readable[c->nreadable++];
    v->iov_base = p;
    v->iov_len = len;
    return 0;
}

static uint64_t total(const struct iovec *v, uint32_t n)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += v[i].iov_len;
    return sum;
}

/* Copy ``len`` bytes from the buffers ``v`` (skipping ``skip``) to ``dst``; bytes copied. */
static uint64_t gather(uint8_t *dst, const struct iovec *v, uint32_t n, uint64_t skip, uint64_t len)
{
    uint64_t done = 0;
    for (uint32_t i = 0; i < n && done < len; i++) {
        uint64_t l = v[i].iov_len;
        if (skip >= l) { skip -= l; continue; }
        uint64_t count = l - skip < len - done ? l - skip : len - done;
        memcpy(dst + done, (uint8_t *)v[i].iov_base + skip, count);
        done += count;
        skip = 0;
    }
    return done;
}

static uint64_t scatter(const struct iovec *v, uint32_t n, const uint8_t *src, uint64_t len)
{
    uint64_t done = 0;
    for (uint32_t i = 0; i < n && done < len; i++) {
        uint64_t count = v[i].iov_len < len - done ? v[i].iov_len : len - done;
        memcpy(v[i].iov_base, src + done, count);
        done += count;
    }
    return done;
}

static int in_bounds(const pyvmm_blk *b, uint64_t sector, uint64_t length)
{
    if (length % SECTOR || sector > b->size / SECTOR)
        return 0;
    return sector * SECTOR + length <= b->size;
}

static inline uint64_t align_up(uint64_t n) { return (n + 4095) & ~(uint64_t)4095; }

/* The whole of ``v`` from the image at ``offset``, or to it: bytes moved, -errno on error.
   A short transfer is retried from where it stopped; 0 bytes ends it (the file shrank). */
static int64_t transfer(pyvmm_blk *b, struct iovec *v, uint32_t n, uint64_t offset, int write)
{
    uint64_t length = total(v, n), done = 0;
    while (done < length) {
        /* the iovec from ``done`` on */
        uint32_t first = 0;
        uint64_t skip = done;
        while (first < n && skip >= v[first].iov_len) { skip -= v[first].iov_len; first++; }
        struct iovec saved = v[first];
        v[first].iov_base = (uint8_t *)v[first].iov_base + skip;
        v[first].iov_len -= skip;
        ssize_t got = write ? pwritev(b->fd, v + first, (int)(n - first), (off_t)(offset + done))
                            : preadv(b->fd, v + first, (int)(n - first), (off_t)(offset + done));
        v[first] = saved;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EINVAL && b->bounce)
                break;  /* O_DIRECT refused the guest's buffers: bounce the rest */
            return -errno;
        }
        if (got == 0)
            return (int64_t)done;
        done += (uint64_t)got;
    }
    /* O_DIRECT: a piece of at most bounce_size at a time through the aligned buffer */
    while (done < length) {
        uint64_t piece = length - done < b->bounce_size ? length - done : b->bounce_size;
        ssize_t got;
        if (write) {
            gather(b->bounce, v, n, done, piece);
            do got = pwrite(b->fd, b->bounce, piece, (off_t)(offset + done));
            while (got < 0 && errno == EINTR);
        } else {
            do got = pread(b->fd, b->bounce, align_up(piece), (off_t)(offset + done));
            while (got < 0 && errno == EINTR);
            if (got > (ssize_t)piece)
                got = (ssize_t)piece;
            if (got > 0) {  /* scatter into v from ``done`` on */
                uint64_t skip = done, copied = 0;
                for (uint32_t i = 0; i < n && copied < (uint64_t)got; i++) {
                    uint64_t l = v[i].iov_len;
                    if (skip >= l) { skip -= l; continue; }
                    uint64_t count = l - skip < (uint64_t)got - copied ? l - skip : (uint64_t)got - copied;
                    memcpy((uint8_t *)v[i].iov_base + skip, b->bounce + copied, count);
                    copied += count;
                    skip = 0;
                }
            }
        }
        if (got < 0)
            return -errno;
        done += (uint64_t)got;
        if ((uint64_t)got < piece)
            break;
    }
    return (int64_t)done;
}

static int io_error(pyvmm_blk *b, int error)
{
    b->io_errors++;
    b->last_errno = error;
    return S_IOERR;
}

/* Zeros over [offset, offset + length): a hole, zeroed blocks, else zeros written. */
static int zero_range(pyvmm_blk *b, uint64_t offset, uint64_t length, int unmap, int discard)
{
    int mode = FALLOC_FL_KEEP_SIZE | (unmap || discard ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
    if (fallocate(b->fd, mode, (off_t)offset, (off_t)length) == 0)
        return S_OK;
    int error = errno;
    if (error != EOPNOTSUPP && error != ENOSYS && !(error == EINVAL && !discard))
        return io_error(b, error);
    if (discard)
        return S_OK;  /* a hint: a filesystem that can't is not an error */
    while (length) {
        struct iovec v = {(void *)zeros, length < ZEROS ? length : ZEROS};
        int64_t done = transfer(b, &v, 1, offset, 1);
        if (done < 0)
            return io_error(b, (int)-done);
        if ((uint64_t)done < v.iov_len)
            return io_error(b, EIO);
        offset += v.iov_len;
        length -= v.iov_len;
    }
    return S_OK;
}

/* Run one request; its status, and in *written the bytes put in the guest's buffers. */
static int execute(pyvmm_blk *b, chain *c, uint32_t *written)
{
    uint8_t header[16];
    uint32_t type, ndata;
    uint64_t sector;
    struct iovec data[MAX_CHAIN];
    *written = 0;
    if (gather(header, c->readable, c->nreadable, 0, 16) < 16)
        return S_IOERR;
    memcpy(&type, header, 4);
    memcpy(&sector, header + 8, 8);
    /* the readable data: what follows the header, empty buffers left out */
    struct iovec rdata[MAX_CHAIN];
    uint32_t nrdata = 0;
    uint64_t skip = 16;
    for (uint32_t i = 0; i < c->nreadable; i++) {
        uint64_t l = c->readable[i].iov_len;
        if (skip >= l) { skip -= l; continue; }
        rdata[nrdata].iov_base = (uint8_t *)c->readable[i].iov_base + skip;
        rdata[nrdata++].iov_len = l - skip;
        skip = 0;
    }
    uint64_t wtotal = total(c->writable, c->nwritable);
    if (type == T_IN || type == T_GET_ID) {
        if (nrdata)
            return S_IOERR;  /* the device writes the data: a read-only buffer is wrong */
        memcpy(data, c->writable, sizeof data[0] * c->nwritable);
        ndata = c->nwritable;
    } else {
        if (wtotal)
            return S_IOERR;  /* writable data on a write or flush */
        memcpy(data, rdata, sizeof data[0] * nrdata);
        ndata = nrdata;
    }
    uint64_t length = total(data, ndata);
    if (ndata > b->seg_max || length > (uint64_t)b->seg_max * b->size_max)
        return S_IOERR;
    switch (type) {
    case T_IN: {
        if (!in_bounds(b, sector, length))
            return S_IOERR;
        if (!length)
            return S_OK;
        int64_t done = transfer(b, data, ndata, sector * SECTOR, 0);
        if (done < 0)
            return io_error(b, (int)-done);
        *written = (uint32_t)done;
        return (uint64_t)done == length ? S_OK : S_IOERR;
    }
    case T_OUT: {
        if (b->readonly || !in_bounds(b, sector, length))
            return S_IOERR;
        if (!length)
            return S_OK;
        int64_t done = transfer(b, data, ndata, sector * SECTOR, 1);
        if (done < 0)
            return io_error(b, (int)-done);
        return (uint64_t)done == length ? S_OK : S_IOERR;
    }
    case T_FLUSH:
        if (!b->readonly && fdatasync(b->fd) < 0)
            return io_error(b, errno);
        return S_OK;
    case T_GET_ID:
        *written = (uint32_t)scatter(data, ndata, b->serial, sizeof b->serial);
        return S_OK;
    case T_DISCARD:
    case T_WRITE_ZEROES: {
        uint8_t segment[16];
        uint64_t start;
        uint32_t count, flags;
        if (b->readonly || length != 16)
            return S_IOERR;  /* one segment: the payload stays small */
        gather(segment, data, ndata, 0, 16);
        memcpy(&start, segment, 8); memcpy(&count, segment + 8, 4); memcpy(&flags, segment + 12, 4);
        uint32_t largest = type == T_DISCARD ? b->max_discard_sectors : b->max_write_zeroes_sectors;
        if (count > largest || !in_bounds(b, start, (uint64_t)count * SECTOR))
            return S_IOERR;
        return zero_range(b, start * SECTOR, (uint64_t)count * SECTOR,
                          flags & WRITE_ZEROES_FLAG_UNMAP, type == T_DISCARD);
    }
    }
    return S_UNSUPP;
}

/* Serve the available requests (a queue's worth at most, within the time budget). */
int pyvmm_blk_process(pyvmm_blk *b)
{
    pyvmm_ring *q = &b->q;
    uint16_t used_before = q->next_used;
    uint64_t deadline = now_ns() + b->budget_ns;
    uint32_t served = 0;
    int status = 0;
    const char *why = NULL;
    static __thread chain c;
    if (q->desc == NULL)  /* the driver never made it ready */
        return 0;
    for (;;) {
        if (served >= q->size || (served && now_ns() >= deadline)) {
            set_avail_event(q);
            if (has_available(q))
                status |= PYVMM_BLK_MORE;
            break;
        }
        int head = ring_pop(q, &why);
        if (head == -2) {
            status |= PYVMM_BLK_ERROR;
            break;
        }
        if (head < 0) {
            set_avail_event(q);
            if (!has_available(q))
                break;
            continue;
        }
        c.nreadable = c.nwritable = 0;
        if (ring_walk(b->regions, b->nregions, q, head, take, &c, &why) < 0) {
            status |= PYVMM_BLK_ERROR;
            break;
        }
        uint32_t used = 0;
        if (c.nwritable && c.writable[c.nwritable - 1].iov_len) {
            /* the status byte: the last writable byte, not data */
            struct iovec *last = &c.writable[c.nwritable - 1];
            uint8_t *status_byte = (uint8_t *)last->iov_base + last->iov_len - 1;
            if (--last->iov_len == 0)
                c.nwritable--;
            uint32_t written;
            *status_byte = (uint8_t)execute(b, &c, &written);
            used = written + 1;
            b->requests++;
        }  /* else no status byte: the chain is returned untouched */
        add_used(q, head, used);
        served++;
    }
    if (q->next_used != used_before)
        publish_used(q);
    if (needs_interrupt(q, used_before))
        status |= PYVMM_BLK_INTERRUPT;
    if (status & PYVMM_BLK_ERROR)
        snprintf(b->error, sizeof b->error, "%s", why);
    return status;
}

/* Serve the queue until stop_fd is signalled (PYVMM_BLK_STOPPED) or the ring is
   malformed (PYVMM_BLK_ERROR, b->error says why). */
int pyvmm_blk_serve(pyvmm_blk *b)
{
    struct pollfd fds[2] = {{b->kick_fd, POLLIN, 0}, {b->stop_fd, POLLIN, 0}};
    int more = 1;  /* serve once at start: work may predate us */
    for (;;) {
        if (more) {
            int status = pyvmm_blk_process(b);
            if (status & PYVMM_BLK_INTERRUPT) {
                b->interrupts++;
                raise_interrupt(&b->irq, b->call_fd);
            }
            if (status & PYVMM_BLK_ERROR)
                return PYVMM_BLK_ERROR;
            more = status & PYVMM_BLK_MORE;
        }
        int count = poll(fds, 2, more ? 0 : -1);
        if (count < 0 && errno != EINTR) {
            snprintf(b->error, sizeof b->error, "poll: %s", strerror(errno));
            return PYVMM_BLK_ERROR;
        }
        b->wakeups++;
        if (count > 0 && fds[1].revents) {
            drain_eventfd(b->stop_fd);
            return PYVMM_BLK_STOPPED;
        }
        if (count > 0 && fds[0].revents) {
            drain_eventfd(b->kick_fd);
            more = 1;
        }
    }
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.host._disk_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
