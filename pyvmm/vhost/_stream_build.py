"""cffi build script for the C half of ``--net user``: passt's stream and the NIC's rings.

For ``pyvmm.vhost.stream.FrameStream`` (QEMU's stream framing, a 4-byte
big-endian length before each frame, on passt's socket) and
``pyvmm.devices.virtio.net.NetDevice`` over it.  Python per frame was the
cost of ``--net user`` (in the rig, where Python runs emulated, a 1-byte
round trip took four times QEMU's), so the frames never reach Python:

- the stream's buffers are C arrays of fixed size (input: one read chunk and
  one frame; output: ``out_limit`` and one frame), parsed and written here;
- ``pyvmm_net_transmit`` walks every available transmit chain and sends the
  frames (each after its 12-byte virtio-net header, behind its length) with
  one ``sendmsg`` per batch straight from guest RAM; what the socket refuses
  is copied into the output buffer, and the chains behind it wait on the ring
  until that drains (as vhost-net's wait while its socket is full); the used
  index is published once, after;
- ``pyvmm_net_receive`` reads the socket in big chunks, splits frames by their
  length and fills mergeable receive buffers, one used-index store per batch;
  it asks the driver to notify new receive buffers only while a frame waits
  for one (otherwise the socket wakes us, and the driver's refills cost no
  wake-up), and marks frames DATA_VALID when the driver took GUEST_CSUM;
- ``pyvmm_net_serve`` is a loop for a thread of its own (cffi releases the
  GIL): epoll over the two kick eventfds (KVM's ioeventfds), the socket and a
  stop eventfd, the interrupt the machine's pulse function where it gave one
  (KVM_IRQ_LINE made by this thread), else an eventfd write (KVM's irqfd).
  The device sees eventfds and an opaque C function, never KVM.

Guest memory is checked exactly as ``pyvmm.devices.virtio.queue`` does (by the
ring C both request loops share, ``pyvmm/host/_virtq_source.py``): every
descriptor buffer lies inside one RAM region, a chain (indirect tables
included) holds at most the queue's size of descriptors, an indirect table is
neither nested nor chained nor of a bad length, no readable descriptor
follows a writable one; anything else is an error whose message the device
turns into DEVICE_NEEDS_RESET.  No host memory outside guest RAM and the
stream's own buffers is read or written.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import cffi

# By path, not by import: a build (pip's isolated one) need not have pyvmm on sys.path.
_RING = runpy.run_path(str(Path(__file__).resolve().parents[1] / "host" / "_virtq_source.py"))
RING_CDEF: str = _RING["RING_CDEF"]
RING_SOURCE: str = _RING["RING_SOURCE"]

CDEF = RING_CDEF + r"""

typedef struct {
    int fd;
    int closed;                    /* the peer closed its end, or the socket failed */
    int drained;                   /* the last read took less than it asked: the socket
                                      was empty then (EPOLLIN tells of more) */
    uint32_t max_frame;            /* longer frames from the peer are skipped, counted */
    uint8_t *in;
    uint32_t in_start, in_len, in_cap;
    uint32_t skip;                 /* bytes still to skip of an oversize frame */
    uint32_t frame_len;            /* a whole frame waits at in_start (its length), or 0 */
    uint8_t *out;
    uint32_t out_len, out_cap, out_limit;
    uint64_t oversize;
} pyvmm_stream;

typedef struct {
    pyvmm_ram_region regions[8];
    uint32_t nregions;
    pyvmm_ring rx, tx;
    pyvmm_stream *stream;
    int mergeable;
    int data_valid;                /* VIRTIO_NET_F_GUEST_CSUM: received frames are marked
                                      VIRTIO_NET_HDR_F_DATA_VALID (passt computed their sums) */
    uint32_t max_frame;            /* the device's: MTU + Ethernet and VLAN headers */
    uint64_t budget_ns;            /* most time one call spends */
    uint64_t rx_frames, tx_frames, rx_oversize, tx_oversize, tx_bad_header;
    int kick_rx, kick_tx, call_fd, stop_fd;   /* eventfds, for pyvmm_net_serve */
    pyvmm_interrupt irq;           /* the machine's direct interrupt, before call_fd */
    uint64_t tx_irq_hold_ns;       /* pyvmm_net_serve holds a transmit-only interrupt this
                                      long for a receive interrupt to carry it (0: never) */
    uint64_t wakeups, interrupts, tx_irqs_merged;
    char error[200];
} pyvmm_net;

#define PYVMM_NET_INTERRUPT 1
#define PYVMM_NET_MORE 2
#define PYVMM_NET_ERROR 4
#define PYVMM_NET_STOPPED 8

int pyvmm_stream_fill(pyvmm_stream *s);
int pyvmm_stream_peek(pyvmm_stream *s);
void pyvmm_stream_consume(pyvmm_stream *s);
int pyvmm_stream_send(pyvmm_stream *s, const uint8_t *frame, uint32_t len);
int pyvmm_stream_flush(pyvmm_stream *s);
int pyvmm_net_transmit(pyvmm_net *n);
int pyvmm_net_receive(pyvmm_net *n);
int pyvmm_net_serve(pyvmm_net *n);
"""

SOURCE = r"""
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
""" + RING_SOURCE + r"""
#define PYVMM_NET_INTERRUPT 1
#define PYVMM_NET_MORE 2
#define PYVMM_NET_ERROR 4
#define PYVMM_NET_STOPPED 8
#define NET_HDR 12
#define HDR_F_DATA_VALID 2

""" + CDEF[len(RING_CDEF):].split("#define", 1)[0] + r"""

/* ---- the stream: QEMU's framing on a non-blocking socket ---------------------------- */

/* Parse up to the next whole frame (skipping oversize and empty ones); 1 if one waits. */
int pyvmm_stream_peek(pyvmm_stream *s)
{
    for (;;) {
        uint32_t held;
        if (s->frame_len)
            return 1;
        held = s->in_len - s->in_start;
        if (s->skip) {
            uint32_t count = s->skip < held ? s->skip : held;
            s->in_start += count;
            s->skip -= count;
            if (s->skip)
                return 0;
            held -= count;
        }
        if (held < 4)
            return 0;
        const uint8_t *p = s->in + s->in_start;
        uint32_t length = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (length > s->max_frame) {
            s->oversize++;
            s->in_start += 4;
            s->skip = length;
            continue;
        }
        if (held - 4 < length)
            return 0;
        if (length == 0) {  /* an empty frame carries nothing */
            s->in_start += 4;
            continue;
        }
        s->frame_len = length;
        return 1;
    }
}

void pyvmm_stream_consume(pyvmm_stream *s)
{
    if (s->frame_len) {
        s->in_start += 4 + s->frame_len;
        s->frame_len = 0;
    }
}

/* Read what the socket has (up to the buffer's room) unless a whole frame waits.
   1 if bytes came, 0 if none (or a frame waits), -1 once closed. */
int pyvmm_stream_fill(pyvmm_stream *s)
{
    ssize_t got;
    if (s->closed)
        return -1;
    if (pyvmm_stream_peek(s))
        return 0;
    if (s->in_start) {  /* what is held is less than one frame and its length */
        memmove(s->in, s->in + s->in_start, s->in_len - s->in_start);
        s->in_len -= s->in_start;
        s->in_start = 0;
    }
    uint32_t room = s->in_cap - s->in_len;
    got = recv(s->fd, s->in + s->in_len, room, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (got <= 0) {
        s->closed = 1;
        return -1;
    }
    s->in_len += (uint32_t)got;
    s->drained = (uint32_t)got < room;
    return 1;
}

/* Write what is kept; 0, or -errno for a failure other than the peer going away.
   What the socket leaves is moved to the buffer's start once, at the end. */
int pyvmm_stream_flush(pyvmm_stream *s)
{
    uint32_t done = 0;
    int result = 0;
    while (done < s->out_len) {
        ssize_t sent = send(s->fd, s->out + done, s->out_len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET) {
                s->closed = 1;
                s->out_len = 0;
                return 0;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                result = -errno;
            break;
        }
        done += (uint32_t)sent;
    }
    if (done) {
        memmove(s->out, s->out + done, s->out_len - done);
        s->out_len -= done;
    }
    return result;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/* Queue one frame (the caller checked can-send); -ENOBUFS if it can't fit at all. */
int pyvmm_stream_send(pyvmm_stream *s, const uint8_t *frame, uint32_t len)
{
    if (s->closed)
        return 0;
    if ((uint64_t)s->out_len + 4 + len > s->out_cap)
        return -ENOBUFS;
    int was_empty = s->out_len == 0;
    put_be32(s->out + s->out_len, len);
    memcpy(s->out + s->out_len + 4, frame, len);
    s->out_len += 4 + len;
    return was_empty ? pyvmm_stream_flush(s) : 0;
}

/* ---- guest memory and the split virtqueue (pyvmm/host/_virtq_source.py) ------------- */

static int fail(pyvmm_net *n, const char *message)
{
    snprintf(n->error, sizeof n->error, "%s", message);
    return -1;
}

/* What a chain's walk does with each buffer. */
typedef struct {
    /* transmit: gather the readable bytes after the header into dst (up to cap), or,
       with iov, point iov entries at them (up to iov_cap; overflow if more) */
    uint8_t *dst;
    uint64_t cap, readable;
    uint8_t gso_type;
    struct iovec *iov;
    uint32_t niov, iov_cap;
    int overflow;
    /* receive: scatter src over the writable buffers */
    const uint8_t *src;
    uint64_t src_len, src_off;     /* src_off counts the header too */
    uint64_t writable;
    uint8_t *hdr_nb[2];            /* where num_buffers' two bytes went */
    int receive;
} walk_state;

static void take_buffer(walk_state *w, uint8_t *p, uint32_t len, const uint8_t *header)
{
    if (!w->receive) {
        for (uint32_t i = 0; i < len; i++) {  /* the header: only gso_type matters */
            uint64_t at = w->readable + i;
            if (at >= NET_HDR)
                break;
            if (at == 1)
                w->gso_type = p[i];
        }
        uint64_t start = w->readable < NET_HDR ? NET_HDR - w->readable : 0;
        if (start < len) {
            uint64_t off = w->readable + start - NET_HDR, count = len - start;
            if (w->iov) {
                if (w->niov < w->iov_cap) {
                    w->iov[w->niov].iov_base = p + start;
                    w->iov[w->niov].iov_len = count;
                    w->niov++;
                } else {
                    w->overflow = 1;
                }
            } else if (off < w->cap) {
                if (count > w->cap - off)
                    count = w->cap - off;
                memcpy(w->dst + off, p + start, count);
            }
        }
        w->readable += len;
        return;
    }
    uint64_t total = NET_HDR + w->src_len;
    uint32_t i = 0;
    while (i < len && w->src_off < NET_HDR) {
        uint64_t at = w->src_off;
        if (at == 10 || at == 11)
            w->hdr_nb[at - 10] = p + i;
        p[i] = header[at];
        i++;
        w->src_off++;
    }
    if (i < len && w->src_off < total) {
        uint64_t count = len - i;
        if (count > total - w->src_off)
            count = total - w->src_off;
        memcpy(p + i, w->src + (w->src_off - NET_HDR), count);
        w->src_off += count;
        i += count;
    }
    w->writable += len;  /* the chain's room: counted in full, as writable_length is */
}

typedef struct {
    walk_state *w;
    const uint8_t *header;
} net_take;

/* The walk hands over the readable buffers to transmit, the writable ones to receive. */
static int net_take_buffer(void *ctx, uint8_t *p, uint32_t len, int writable)
{
    net_take *t = ctx;
    if (writable == t->w->receive)
        take_buffer(t->w, p, len, t->header);
    return 0;
}

static int walk(pyvmm_net *n, pyvmm_ring *q, uint32_t head, walk_state *w, const uint8_t *header)
{
    const char *why = NULL;
    net_take t = {w, header};
    if (ring_walk(n->regions, n->nregions, q, head, net_take_buffer, &t, &why) < 0)
        return fail(n, why);
    return 0;
}

/* The next available chain's head (-1: none); -2 on error (n->error says why). */
static int pop_head(pyvmm_net *n, pyvmm_ring *q)
{
    const char *why = NULL;
    int head = ring_pop(q, &why);
    if (head == -2)
        fail(n, why);
    return head;
}

/* ---- transmit: guest -> peer ------------------------------------------------------------ */

/* Frames gathered for one sendmsg straight from guest RAM (no copy of ours): at most
   TX_BATCH frames, TX_IOV buffers and out_limit bytes (so what the socket refuses
   always fits the output buffer, which is empty when a batch starts). */
#define TX_BATCH 64
#define TX_IOV 1024

typedef struct {
    struct iovec iov[TX_IOV];
    uint8_t lengths[TX_BATCH][4];
    uint32_t niov, frames;
    uint64_t bytes;
} tx_batch;

/* Send the batch; what the socket did not take is copied to the output buffer, in order.
   0, or -errno for a failure other than the peer going away. */
static int send_batch(pyvmm_stream *s, tx_batch *b)
{
    ssize_t sent = 0;
    int error = 0;
    if (!b->niov)
        return 0;
    if (!s->closed) {
        struct msghdr msg = {0};
        msg.msg_iov = b->iov;
        msg.msg_iovlen = b->niov;
        do
            sent = sendmsg(s->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            if (errno == EPIPE || errno == ECONNRESET)
                s->closed = 1;
            else if (errno != EAGAIN && errno != EWOULDBLOCK)
                error = -errno;
            sent = 0;
        }
    }
    if (!s->closed && !error) {
        uint64_t skip = (uint64_t)sent;
        for (uint32_t i = 0; i < b->niov; i++) {
            uint64_t len = b->iov[i].iov_len;
            if (skip >= len) {
                skip -= len;
                continue;
            }
            if (len - skip > s->out_cap - s->out_len) {  /* never: the batch is bounded */
                error = -ENOBUFS;
                break;
            }
            memcpy(s->out + s->out_len, (uint8_t *)b->iov[i].iov_base + skip, len - skip);
            s->out_len += (uint32_t)(len - skip);
            skip = 0;
        }
    }
    b->niov = b->frames = 0;
    b->bytes = 0;
    return error;
}

int pyvmm_net_transmit(pyvmm_net *n)
{
    pyvmm_ring *q = &n->tx;
    pyvmm_stream *s = n->stream;
    uint16_t used_before = q->next_used;
    uint64_t deadline = now_ns() + n->budget_ns;
    uint32_t served = 0;
    int status = 0, flush_error = 0;
    tx_batch batch;
    batch.niov = batch.frames = 0;
    batch.bytes = 0;
    if (q->desc == NULL)  /* the driver never made it ready */
        return 0;
    for (;;) {
        if (served >= q->size || (served && now_ns() >= deadline)) {
            set_avail_event(q);
            if (has_available(q))
                status |= PYVMM_NET_MORE;
            break;
        }
        if (s->closed)
            break;
        /* What the socket refused waits in the output buffer: the chains stay on the
           ring until it drains (EPOLLOUT brings us back), to go straight from guest
           RAM then, as vhost-net leaves them while its socket is full. */
        if (s->out_len) {
            flush_error = pyvmm_stream_flush(s);
            if (flush_error || s->out_len)
                break;
        }
        int head = pop_head(n, q);
        if (head == -2) {
            status |= PYVMM_NET_ERROR;
            break;
        }
        if (head < 0) {
            set_avail_event(q);
            if (!has_available(q))
                break;
            continue;
        }
        /* Nothing is kept for the peer here: gather the frame's buffers for one sendmsg. */
        walk_state w = {0};
        w.iov = batch.iov + batch.niov + 1;
        w.iov_cap = TX_IOV - batch.niov - 1;
        if (walk(n, q, head, &w, NULL) < 0) {
            status |= PYVMM_NET_ERROR;
            break;
        }
        if (w.readable < NET_HDR || w.gso_type) {
            n->tx_bad_header++;  /* no header, or segmentation we never offered */
        } else if (w.readable - NET_HDR > n->max_frame) {
            n->tx_oversize++;
        } else if (w.overflow) {
            /* more buffers than the batch has room for: send what is gathered, then
               copy this frame into the output buffer if the socket took all of it */
            if (!flush_error)
                flush_error = send_batch(s, &batch);
            if (flush_error || s->out_len) {
                q->next_avail--;  /* the socket is full: the chain waits on the ring */
                break;
            }
            walk_state again = {0};
            again.dst = s->out + 4;
            again.cap = s->out_cap - 4;
            if (walk(n, q, head, &again, NULL) < 0) {
                status |= PYVMM_NET_ERROR;  /* the driver rewrote it meanwhile */
                break;
            }
            uint32_t length = (uint32_t)(again.readable - NET_HDR);
            if (again.readable < NET_HDR || again.gso_type) {
                n->tx_bad_header++;
            } else if (again.readable - NET_HDR > n->max_frame || length > again.cap) {
                n->tx_oversize++;
            } else {
                put_be32(s->out, length);
                s->out_len = 4 + length;
                n->tx_frames++;
            }
        } else {
            uint32_t length = (uint32_t)(w.readable - NET_HDR);
            put_be32(batch.lengths[batch.frames], length);
            batch.iov[batch.niov].iov_base = batch.lengths[batch.frames];
            batch.iov[batch.niov].iov_len = 4;
            batch.niov += 1 + w.niov;
            batch.frames++;
            batch.bytes += 4 + length;
            n->tx_frames++;
            if (batch.frames == TX_BATCH || batch.bytes >= s->out_limit ||
                batch.niov >= TX_IOV - 1) {
                if (!flush_error)
                    flush_error = send_batch(s, &batch);
            }
        }
        add_used(q, head, 0);
        served++;
        if (flush_error)
            break;
    }
    /* The frames gathered go (or are copied) before the driver may reuse their buffers. */
    if (!flush_error)
        flush_error = send_batch(s, &batch);
    if (q->next_used != used_before)
        publish_used(q);
    if (!flush_error)
        flush_error = pyvmm_stream_flush(s);
    if (needs_interrupt(q, used_before))
        status |= PYVMM_NET_INTERRUPT;
    if (flush_error && !(status & PYVMM_NET_ERROR)) {
        snprintf(n->error, sizeof n->error, "sending to the peer: %s", strerror(-flush_error));
        s->closed = 1;
        s->out_len = 0;
    }
    return status;
}

/* ---- receive: peer -> guest ------------------------------------------------------------- */

enum { DELIVERED, DROPPED, NO_ROOM, BROKEN };

static int put_frame(pyvmm_net *n, pyvmm_ring *q, const uint8_t *frame, uint32_t len)
{
    const uint8_t header[NET_HDR] = {n->data_valid ? HDR_F_DATA_VALID : 0};
    uint64_t needed = NET_HDR + (uint64_t)len, room = 0;
    uint32_t heads[1024], lengths[1024], chains = 0;   /* q->size <= 1024 */
    walk_state w = {0};
    w.receive = 1;
    w.src = frame;
    w.src_len = len;
    while (room < needed) {
        if (chains && !n->mergeable)
            break;
        if (chains >= q->size)
            break;
        int head = pop_head(n, q);
        if (head == -2)
            return BROKEN;
        if (head < 0)
            break;
        uint64_t before = w.src_off;
        w.writable = 0;
        if (walk(n, q, head, &w, header) < 0)
            return BROKEN;
        if (!w.writable) {
            fail(n, "a virtio-net receive chain has no writable buffer");
            return BROKEN;
        }
        heads[chains] = head;
        lengths[chains] = (uint32_t)(w.src_off - before);
        chains++;
        room += w.writable;
    }
    if (room < needed) {
        q->next_avail -= chains;  /* put them back (what we wrote there is the device's) */
        if ((!n->mergeable && chains) || chains >= q->size) {
            n->rx_oversize++;  /* it never fits: buffers too small for the size */
            return DROPPED;
        }
        return NO_ROOM;
    }
    /* num_buffers: the header's last two bytes, wherever they landed */
    if (w.hdr_nb[0]) *w.hdr_nb[0] = chains & 0xFF;
    if (w.hdr_nb[1]) *w.hdr_nb[1] = chains >> 8;
    for (uint32_t i = 0; i < chains; i++)
        add_used(q, heads[i], lengths[i]);
    return DELIVERED;
}

int pyvmm_net_receive(pyvmm_net *n)
{
    pyvmm_ring *q = &n->rx;
    pyvmm_stream *s = n->stream;
    uint16_t used_before = q->next_used;
    uint64_t deadline = now_ns() + n->budget_ns;
    uint32_t delivered = 0;
    int status = 0;
    if (q->desc == NULL)
        return 0;
    int drained = 0;
    for (;;) {
        if (!pyvmm_stream_peek(s)) {
            /* after a short read the socket was empty: no read to hear EAGAIN (the
               caller's epoll is level-triggered: more bytes wake it again) */
            if (!drained && pyvmm_stream_fill(s) > 0) {
                drained = s->drained;
                continue;
            }
            break;
        }
        if (delivered >= q->size || (delivered && now_ns() >= deadline)) {
            /* frames wait: come back now, or when the driver adds a buffer */
            if (has_available(q) || ask_for_next(q))
                status |= PYVMM_NET_MORE;
            break;
        }
        uint32_t len = s->frame_len;
        if (len > n->max_frame) {
            n->rx_oversize++;
            pyvmm_stream_consume(s);
            continue;
        }
        int outcome = put_frame(n, q, s->in + s->in_start + 4, len);
        if (outcome == BROKEN) {
            status |= PYVMM_NET_ERROR;
            break;
        }
        if (outcome == NO_ROOM) {
            if (ask_for_next(q))  /* the frame waits: notify me of the next buffer */
                continue;
            break;
        }
        pyvmm_stream_consume(s);
        if (outcome == DELIVERED) {
            n->rx_frames++;
            delivered++;
        }
    }
    /* No set_avail_event here: a receive buffer the driver adds is worth a notification
       only while a frame waits for one (ask_for_next asked for it then); otherwise the
       socket wakes us and we find the buffers in the ring, so the driver's refills after
       each frame cost no kick, no wake-up (as vhost-net, which enables notification only
       once the ring is empty). */
    if (q->next_used != used_before)
        publish_used(q);
    if (needs_interrupt(q, used_before))
        status |= PYVMM_NET_INTERRUPT;
    return status;
}

/* ---- the serving thread --------------------------------------------------------------- */

/* Serve both queues until stop_fd is signalled (PYVMM_NET_STOPPED), the ring is
   malformed (PYVMM_NET_ERROR, n->error says why) or the peer is gone (0). */
int pyvmm_net_serve(pyvmm_net *n)
{
    pyvmm_stream *s = n->stream;
    int ep = epoll_create1(EPOLL_CLOEXEC), result = 0;
    struct epoll_event ev = {0}, events[8];
    uint32_t sock_events = EPOLLIN, want;
    if (ep < 0) {
        snprintf(n->error, sizeof n->error, "epoll_create1: %s", strerror(errno));
        return PYVMM_NET_ERROR;
    }
    /* The kicks edge-triggered: KVM's ioeventfd wakes the set at every write (each
       eventfd_signal is a wake-up), so the counter need not be read back to zero:
       one read(2) fewer per notification.  (The count grows by one a kick; it would
       take 2^64 of them to stall it.) */
    int fds[3] = {n->kick_rx, n->kick_tx, n->stop_fd};
    for (int i = 0; i < 3; i++) {
        ev.events = fds[i] == n->stop_fd ? EPOLLIN : EPOLLIN | EPOLLET;
        ev.data.fd = fds[i];
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    ev.events = sock_events;
    ev.data.fd = s->fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    int rx_more = 1, tx_more = 1;   /* serve once at start: work may predate us */
    int watching = 1;               /* the socket is in the epoll set (not after a hang-up) */
    uint64_t tx_irq_due = 0;        /* a held transmit interrupt's deadline, or 0 */
    for (;;) {
        int status = 0, rx_status = 0;
        if (tx_more) {
            status |= pyvmm_net_transmit(n);
            tx_more = status & PYVMM_NET_MORE;
        }
        if (!(status & PYVMM_NET_ERROR) && rx_more) {
            rx_status = pyvmm_net_receive(n);
            rx_more = rx_status & PYVMM_NET_MORE;
            status |= rx_status & ~PYVMM_NET_INTERRUPT;
        }
        /* A transmit completion alone is held (up to tx_irq_hold_ns) for the receive
           interrupt that usually follows (the peer's answer, its ACK) to carry it: one
           interrupt instead of two, and one irqfd injection (a kworker's wake-up for an
           IOAPIC line).  The driver frees sent buffers on its next transmit anyway;
           the interrupt matters to a sender that waits for them, and reaches it within
           the hold. */
        if (status & PYVMM_NET_INTERRUPT && !tx_irq_due) {
            if (n->tx_irq_hold_ns)
                tx_irq_due = now_ns() + n->tx_irq_hold_ns;
            else
                rx_status |= PYVMM_NET_INTERRUPT;
        }
        if (tx_irq_due && (rx_status & PYVMM_NET_INTERRUPT || now_ns() >= tx_irq_due ||
                           status & PYVMM_NET_ERROR)) {
            if (rx_status & PYVMM_NET_INTERRUPT)
                n->tx_irqs_merged++;
            rx_status |= PYVMM_NET_INTERRUPT;
            tx_irq_due = 0;
        }
        if (rx_status & PYVMM_NET_INTERRUPT) {
            n->interrupts++;
            raise_interrupt(&n->irq, n->call_fd);
        }
        if (status & PYVMM_NET_ERROR) {
            result = PYVMM_NET_ERROR;
            break;
        }
        if (s->closed && !pyvmm_stream_peek(s))
            break;
        /* The socket: readable while no whole frame waits, writable while output waits. */
        want = (pyvmm_stream_peek(s) ? 0 : EPOLLIN) | (s->out_len ? EPOLLOUT : 0);
        if (watching && want != sock_events) {
            sock_events = want;
            ev.events = want;
            ev.data.fd = s->fd;
            epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
        }
        int timeout = -1;
        if (rx_more || tx_more) {
            timeout = 0;
        } else if (tx_irq_due) {
            uint64_t now = now_ns();
            timeout = now >= tx_irq_due ? 0 : (int)((tx_irq_due - now + 999999) / 1000000);
        }
        int count = epoll_wait(ep, events, 8, timeout);
        if (count < 0 && errno != EINTR) {
            snprintf(n->error, sizeof n->error, "epoll_wait: %s", strerror(errno));
            result = PYVMM_NET_ERROR;
            break;
        }
        n->wakeups++;
        int stop = 0;
        for (int i = 0; i < count; i++) {
            int fd = events[i].data.fd;
            if (fd == n->stop_fd) {
                stop = 1;
            } else if (fd == n->kick_tx) {
                tx_more = 1;
            } else if (fd == n->kick_rx) {
                rx_more = 1;
            } else {
                if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                    int err = pyvmm_stream_flush(s);
                    if (err) {
                        snprintf(n->error, sizeof n->error, "sending to the peer: %s", strerror(-err));
                        s->closed = 1;
                    }
                    tx_more = 1;  /* transmit chains may wait for room */
                }
                if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    rx_more = 1;
                if (events[i].events & (EPOLLERR | EPOLLHUP)) {
                    /* reported whatever is asked: stop watching, or a frame that waits
                       for receive buffers would spin us; EOF is read once it is delivered */
                    epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                    watching = 0;
                }
            }
        }
        if (stop) {
            drain_eventfd(n->stop_fd);
            result = PYVMM_NET_STOPPED;
            break;
        }
    }
    if (tx_irq_due) {  /* held when we stop: the driver still hears of its buffers */
        n->interrupts++;
        raise_interrupt(&n->irq, n->call_fd);
    }
    close(ep);
    return result;
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.vhost._stream_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
