/*
 * A hostile guest: one attack on the VMM per mode, hostile=<mode> on the
 * command line.  Every mode prints "hostile: attacking <mode>" first, so the
 * host knows when the attack is under way.  Modes that end print their result
 * and power off (i8042 reset, status 0); the "forever" modes never stop and
 * the host must still answer --timeout and signals promptly.
 *
 * With the first virtio-block device (a sparse disk of >= 256 MiB):
 *   discard-overlap  DISCARD and WRITE_ZEROES requests whose payload is 254
 *                    overlapping 32 MiB descriptors (8 GiB to read), then an
 *                    indirect table of 4096 such descriptors; prints each
 *                    status (or "needs-reset"), then powers off
 *   zeroes-forever   WRITE_ZEROES with a 1 MiB payload of 65536 one-sector
 *                    segments, 256 per notification, forever
 *   indirect-forever indirect tables of 65535 descriptors, forever (resetting
 *                    the device each time it gives up on us)
 *   read-forever     256 READs per notification, each as large as the device
 *                    allows (254 overlapping buffers of size_max), at an odd
 *                    address (so cache=none bounces), forever
 * With the virtio console:
 *   tx-forever       transmit chains of 256 overlapping 32 MiB buffers, forever
 *   rx-outside       a receive buffer outside guest RAM, then wait: host input
 *                    must make the device need a reset ("hostile: console
 *                    needs reset"), not crash the VMM
 * With command mode's multiport console (the stream ports: port 0 stdin,
 * 1 stdout, 2 stderr, 3 status; queue 1 is port 0's transmit queue, 3 the
 * control transmit queue, 5 port 1's transmit queue):
 *   ports-stdin      256 chains of output on the stdin port (Linux: a command
 *                    that closed stdin writes to /dev/vport0p0); prints
 *                    "hostile: ports-stdin used <n>" or "needs-reset", then
 *                    powers off
 *   ports-tx-forever stdout chains of 256 overlapping 32 MiB buffers (an
 *                    indirect table), forever
 *   ports-status-forever the same on the status port (queue 9), which pyvmm
 *                    keeps in memory rather than passing on
 *   ports-control-forever DEVICE_READY, 256 per notification, forever, and
 *                    never a control receive buffer
 * No device needed:
 *   mmio-wide        8-byte reads of virtio-mmio registers and config space;
 *                    prints "hostile: mmio-wide survived <values>"
 *   flood            lines=N numbered lines on the UART ("hostile: line <i>"),
 *                    then "hostile: flood done"
 */
#include "runtime.h"
#include "vio.h"

#define R_STATUS 0x070
#define R_QUEUE_NOTIFY 0x050
#define S_NEEDS_RESET 0x40
#define F_DISCARD 13
#define F_WRITE_ZEROES 14
#define F_INDIRECT 28
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define T_IN 0
#define T_DISCARD 11
#define T_WRITE_ZEROES 13

/* Guest-physical scratch areas (the guest has >= 64 MiB, identity-mapped). */
#define TABLES   0x00800000ull   /* indirect tables: 256 x 4 KiB, or one of 1 MiB */
#define PAYLOAD  0x00c00000ull   /* headers, segments, status bytes: 4 MiB */
#define BIG      0x01000000ull   /* the overlapped data: 32 MiB */
#define BIG_SIZE (32u << 20)
#define OUTSIDE  0x40000000ull   /* 1 GiB: not guest RAM */

struct vdesc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct req_header { uint32_t type; uint32_t reserved; uint64_t sector; };
struct segment { uint64_t sector; uint32_t count; uint32_t flags; };

static struct vdev dev;

static uint32_t status_register(void)
{
    return *(volatile uint32_t *)(uintptr_t)(dev.base + R_STATUS);
}

static __attribute__((noreturn)) void fail(const char *why)
{
    puts("hostile: FAIL ");
    puts(why);
    putc('\n');
    debug_exit(1);
}

static void announce(const char *mode)
{
    puts("hostile: attacking ");
    puts(mode);
    putc('\n');
}

static void find_and_init(uint32_t id, uint64_t features, int queues, const char *line)
{
    if (vio_find(line, id, &dev))
        fail("no such virtio device announced");
    if (vio_init(&dev, features, queues))
        fail("device set-up");
}

/* An indirect table at ``table``: header, ``count`` data buffers, status. */
static uint32_t fill_table(volatile struct vdesc *table, uint64_t header, uint32_t count,
                           uint64_t data, uint32_t data_len, int data_writable,
                           uint64_t status)
{
    uint32_t n = 0;
    table[n] = (struct vdesc){header, sizeof(struct req_header), DESC_F_NEXT, 1};
    n++;
    for (uint32_t i = 0; i < count; i++, n++)
        table[n] = (struct vdesc){data, data_len,
                                  (uint16_t)(DESC_F_NEXT | (data_writable ? DESC_F_WRITE : 0)),
                                  (uint16_t)(n + 1)};
    table[n] = (struct vdesc){status, 1, DESC_F_WRITE, 0};
    return (n + 1) * 16;
}

/* Head ``head`` of queue ``qi`` points at an indirect table of ``bytes``. */
static void indirect_head(int qi, uint16_t head, uint64_t table, uint32_t bytes)
{
    vq_set(&dev.q[qi], head, (const volatile void *)(uintptr_t)table, bytes, 0, -1);
    dev.q[qi].desc[head].flags = DESC_F_INDIRECT;
}

/* Wait for a used entry, or for the device to give up on us: 1 = used, 0 = reset. */
static int wait_used_or_reset(struct vq *q)
{
    uint16_t head;
    uint32_t len;
    for (;;) {
        if (vq_poll(q, &head, &len))
            return 1;
        if (status_register() & S_NEEDS_RESET)
            return 0;
        __asm__ volatile("pause");
    }
}

static void one_block_request(const char *line, uint32_t type, uint32_t count)
{
    volatile struct req_header *header = (volatile struct req_header *)(uintptr_t)PAYLOAD;
    volatile uint8_t *status = (volatile uint8_t *)(uintptr_t)(PAYLOAD + 64);
    header->type = type;
    header->reserved = 0;
    header->sector = 0;
    *status = 0xee;
    find_and_init(VIRTIO_ID_BLOCK, (1ull << F_DISCARD) | (1ull << F_WRITE_ZEROES)
                  | (1ull << F_INDIRECT), 1, line);
    uint32_t bytes = fill_table((volatile struct vdesc *)(uintptr_t)TABLES, PAYLOAD, count,
                                BIG, BIG_SIZE, 0, PAYLOAD + 64);
    indirect_head(0, 0, TABLES, bytes);
    vq_submit(&dev, 0, 0);
    puts(type == T_DISCARD ? "hostile: discard x" : "hostile: write-zeroes x");
    put_dec(count);
    if (wait_used_or_reset(&dev.q[0])) {
        puts(" status ");
        put_dec(*status);
        putc('\n');
    } else {
        puts(" needs-reset\n");
    }
}

static void discard_overlap(const char *line)
{
    one_block_request(line, T_DISCARD, 254);
    one_block_request(line, T_WRITE_ZEROES, 254);
    one_block_request(line, T_DISCARD, 4096);
}

/* Keep queue 0 full of indirect requests (head i's table at TABLES + i * 4 KiB). */
static __attribute__((noreturn)) void submit_forever(uint32_t table_bytes)
{
    static uint16_t heads[VQ_SIZE];
    struct vq *q = &dev.q[0];
    for (uint16_t i = 0; i < q->size; i++) {
        indirect_head(0, i, TABLES + (uint64_t)i * 4096, table_bytes);
        heads[i] = i;
    }
    vq_submit_many(&dev, 0, heads, q->size);
    for (;;) {
        uint16_t head;
        uint32_t len;
        if (vq_poll(q, &head, &len))
            vq_submit(&dev, 0, head);   /* straight back in */
        else if (status_register() & S_NEEDS_RESET)
            fail("the device needed a reset");
    }
}

/* Reset the device and set queue 0 up again on the same ring memory. */
static void restart(void)
{
    volatile uint32_t *r = (volatile uint32_t *)(uintptr_t)dev.base;
    struct vq *q = &dev.q[0];
    r[0x070 / 4] = 0;
    r[0x070 / 4] = 1;
    r[0x070 / 4] = 3;
    r[0x024 / 4] = 0;
    r[0x020 / 4] = (uint32_t)dev.features;
    r[0x024 / 4] = 1;
    r[0x020 / 4] = (uint32_t)(dev.features >> 32);
    r[0x070 / 4] = 11;
    memset((void *)(uintptr_t)q->desc, 0, 3 * 4096);
    q->avail_idx = 0;
    q->used_seen = 0;
    q->avail[0] = 1;
    r[0x030 / 4] = 0;
    r[0x038 / 4] = q->size;
    r[0x080 / 4] = (uint32_t)(uintptr_t)q->desc;
    r[0x090 / 4] = (uint32_t)(uintptr_t)q->avail;
    r[0x0a0 / 4] = (uint32_t)(uintptr_t)q->used;
    r[0x044 / 4] = 1;
    r[0x070 / 4] = 15;
}

static __attribute__((noreturn)) void zeroes_forever(const char *line)
{
    find_and_init(VIRTIO_ID_BLOCK, (1ull << F_WRITE_ZEROES) | (1ull << F_INDIRECT), 1, line);
    volatile struct req_header *header = (volatile struct req_header *)(uintptr_t)PAYLOAD;
    volatile struct segment *segments = (volatile struct segment *)(uintptr_t)(PAYLOAD + 4096);
    *header = (struct req_header){T_WRITE_ZEROES, 0, 0};
    for (uint32_t i = 0; i < 65536; i++)
        segments[i] = (struct segment){i, 1, 0};
    for (uint32_t i = 0; i < VQ_SIZE; i++) {
        volatile struct vdesc *table = (volatile struct vdesc *)(uintptr_t)(TABLES + i * 4096ull);
        table[0] = (struct vdesc){PAYLOAD, 16, DESC_F_NEXT, 1};
        table[1] = (struct vdesc){PAYLOAD + 4096, 1u << 20, DESC_F_NEXT, 2};
        table[2] = (struct vdesc){PAYLOAD + 32 + i, 1, DESC_F_WRITE, 0};
    }
    submit_forever(3 * 16);
}

static __attribute__((noreturn)) void indirect_forever(const char *line)
{
    volatile struct req_header *header = (volatile struct req_header *)(uintptr_t)PAYLOAD;
    *header = (struct req_header){T_IN, 0, 0};
    uint32_t bytes = fill_table((volatile struct vdesc *)(uintptr_t)TABLES, PAYLOAD, 65533,
                                BIG, 512, 1, PAYLOAD + 64);
    find_and_init(VIRTIO_ID_BLOCK, 1ull << F_INDIRECT, 1, line);
    for (;;) {
        indirect_head(0, 0, TABLES, bytes);
        vq_submit(&dev, 0, 0);
        while (wait_used_or_reset(&dev.q[0]))
            vq_submit(&dev, 0, 0);
        restart();   /* the device gave up on us: start over, forever */
    }
}

static __attribute__((noreturn)) void read_forever(const char *line)
{
    find_and_init(VIRTIO_ID_BLOCK, 1ull << F_INDIRECT, 1, line);
    volatile struct req_header *header = (volatile struct req_header *)(uintptr_t)PAYLOAD;
    *header = (struct req_header){T_IN, 0, 0};
    uint32_t size_max = vio_config32(&dev, 8);
    if (size_max == 0 || size_max > (1u << 20))
        size_max = 1u << 20;
    for (uint32_t i = 0; i < VQ_SIZE; i++)
        fill_table((volatile struct vdesc *)(uintptr_t)(TABLES + i * 4096ull), PAYLOAD, 254,
                   BIG + 1, size_max, 1, PAYLOAD + 64 + i);
    submit_forever(256 * 16);
}

static __attribute__((noreturn)) void tx_forever(const char *line)
{
    find_and_init(VIRTIO_ID_CONSOLE, 1ull << F_INDIRECT, 2, line);
    static uint16_t heads[VQ_SIZE];
    struct vq *q = &dev.q[1];
    volatile struct vdesc *table = (volatile struct vdesc *)(uintptr_t)TABLES;
    for (uint32_t i = 0; i < VQ_SIZE; i++)
        table[i] = (struct vdesc){BIG, BIG_SIZE, i + 1 < VQ_SIZE ? DESC_F_NEXT : 0,
                                  (uint16_t)(i + 1)};
    for (uint16_t i = 0; i < q->size; i++) {
        indirect_head(1, i, TABLES, VQ_SIZE * 16);
        heads[i] = i;
    }
    vq_submit_many(&dev, 1, heads, q->size);
    for (;;) {
        uint16_t head;
        uint32_t len;
        if (vq_poll(q, &head, &len))
            vq_submit(&dev, 1, head);
    }
}

static void rx_outside(const char *line)
{
    find_and_init(VIRTIO_ID_CONSOLE, 0, 2, line);
    vq_set(&dev.q[0], 0, (const volatile void *)(uintptr_t)OUTSIDE, 64, 1, -1);
    vq_submit(&dev, 0, 0);
    puts("hostile: rx posted\n");
    if (wait_used_or_reset(&dev.q[0]))
        fail("a receive buffer outside RAM was used");
    puts("hostile: console needs reset\n");
}

/* -- the stream ports ------------------------------------------------------------ */

#define F_MULTIPORT 1
#define PORT_QUEUES 10              /* 4 ports + control: 2 queues each */
#define PORT_RINGS 0x00400000ull    /* 3 pages per queue */
static struct vq pq[PORT_QUEUES];

static void ports_init(const char *line)
{
    if (vio_find(line, VIRTIO_ID_CONSOLE, &dev))
        fail("no virtio console announced");
    volatile uint32_t *r = (volatile uint32_t *)(uintptr_t)dev.base;
    r[0x070 / 4] = 0;
    r[0x070 / 4] = 3;
    r[0x024 / 4] = 0;
    r[0x020 / 4] = (1u << F_MULTIPORT);
    r[0x024 / 4] = 1;
    r[0x020 / 4] = 1;                        /* VERSION_1 */
    r[0x070 / 4] = 11;
    if (!(r[0x070 / 4] & 8))
        fail("MULTIPORT and VERSION_1 refused");
    for (uint32_t i = 0; i < PORT_QUEUES; i++) {
        struct vq *q = &pq[i];
        uint8_t *mem = (uint8_t *)(uintptr_t)(PORT_RINGS + i * 3 * 4096ull);
        memset(mem, 0, 3 * 4096);
        r[0x030 / 4] = i;
        uint32_t max = r[0x034 / 4];
        if (max == 0)
            fail("a ports queue is missing");
        q->size = (uint16_t)(max < VQ_SIZE ? max : VQ_SIZE);
        q->desc = (volatile struct vq_desc *)mem;
        q->avail = (volatile uint16_t *)(mem + 4096);
        q->used = (volatile uint32_t *)(mem + 8192);
        q->avail_idx = 0;
        q->used_seen = 0;
        q->avail[0] = 1;
        r[0x038 / 4] = q->size;
        r[0x080 / 4] = (uint32_t)(uintptr_t)q->desc;
        r[0x084 / 4] = 0;
        r[0x090 / 4] = (uint32_t)(uintptr_t)q->avail;
        r[0x094 / 4] = 0;
        r[0x0a0 / 4] = (uint32_t)(uintptr_t)q->used;
        r[0x0a4 / 4] = 0;
        r[0x044 / 4] = 1;
    }
    r[0x070 / 4] = 15;
}

static void ports_submit(uint32_t qi, const uint16_t *heads, uint32_t n)
{
    struct vq *q = &pq[qi];
    for (uint32_t i = 0; i < n; i++) {
        q->avail[2 + (q->avail_idx % q->size)] = heads[i];
        q->avail_idx++;
    }
    __asm__ volatile("mfence" ::: "memory");
    q->avail[1] = q->avail_idx;
    __asm__ volatile("mfence" ::: "memory");
    *(volatile uint32_t *)(uintptr_t)(dev.base + R_QUEUE_NOTIFY) = qi;
}

/* Fill queue ``qi`` with chains (set up by the caller), then keep resubmitting them. */
static __attribute__((noreturn)) void ports_forever(uint32_t qi)
{
    static uint16_t heads[VQ_SIZE];
    struct vq *q = &pq[qi];
    for (uint16_t i = 0; i < q->size; i++)
        heads[i] = i;
    ports_submit(qi, heads, q->size);
    for (;;) {
        uint16_t head;
        uint32_t len;
        uint32_t n = 0;
        while (n < VQ_SIZE && vq_poll(q, &head, &len))
            heads[n++] = head;
        if (n)
            ports_submit(qi, heads, n);
        else if (status_register() & S_NEEDS_RESET)
            fail("the ports device needed a reset");
    }
}

static void ports_stdin(const char *line)
{
    static uint16_t heads[VQ_SIZE];
    static const char text[] = "written to the stdin port\n";
    ports_init(line);
    struct vq *q = &pq[1];
    for (uint16_t i = 0; i < q->size; i++) {
        vq_set(q, i, text, sizeof text - 1, 0, -1);
        heads[i] = i;
    }
    ports_submit(1, heads, q->size);
    uint32_t used = 0;
    while (used < q->size) {
        uint16_t head;
        uint32_t len;
        if (vq_poll(q, &head, &len))
            used++;
        else if (status_register() & S_NEEDS_RESET)
            break;
    }
    if (used < q->size)
        puts("hostile: ports-stdin needs-reset\n");
    else {
        puts("hostile: ports-stdin used ");
        put_dec(used);
        putc('\n');
    }
}

static __attribute__((noreturn)) void ports_tx_forever(const char *line, uint32_t qi)
{
    ports_init(line);
    struct vq *q = &pq[qi];
    volatile struct vdesc *table = (volatile struct vdesc *)(uintptr_t)TABLES;
    for (uint32_t i = 0; i < VQ_SIZE; i++)
        table[i] = (struct vdesc){BIG, BIG_SIZE, i + 1 < VQ_SIZE ? DESC_F_NEXT : 0,
                                  (uint16_t)(i + 1)};
    for (uint16_t i = 0; i < q->size; i++) {
        vq_set(q, i, (const volatile void *)(uintptr_t)TABLES, VQ_SIZE * 16, 0, -1);
        q->desc[i].flags = DESC_F_INDIRECT;
    }
    ports_forever(qi);
}

static __attribute__((noreturn)) void ports_control_forever(const char *line)
{
    static const uint32_t ready[2] = {0xffffffffu, 0x00010000u};   /* DEVICE_READY 1 */
    ports_init(line);
    struct vq *q = &pq[3];
    for (uint16_t i = 0; i < q->size; i++)
        vq_set(q, i, ready, sizeof ready, 0, -1);
    ports_forever(3);
}

static void mmio_wide(const char *line)
{
    static const char key[] = "virtio_mmio.device=4K@";
    uint64_t sum = 0;
    for (const char *p = line; *p; p++) {
        size_t i = 0;
        while (key[i] && p[i] == key[i])
            i++;
        if (key[i])
            continue;
        uint64_t base = 0;
        for (const char *s = p + i + 2; ; s++) {   /* after "0x" */
            char c = *s;
            if (c >= '0' && c <= '9') base = base * 16 + (uint64_t)(c - '0');
            else if (c >= 'a' && c <= 'f') base = base * 16 + (uint64_t)(c - 'a' + 10);
            else break;
        }
        for (unsigned offset = 0; offset < 0x110; offset += 4)
            sum += *(volatile uint64_t *)(uintptr_t)(base + offset);
    }
    puts("hostile: mmio-wide survived ");
    put_hex(sum);
    putc('\n');
}

static void flood(const char *line)
{
    char text[24];
    uint64_t lines = cmdline_get(line, "lines", text, sizeof text) ? parse_dec(text) : 20000;
    for (uint64_t i = 0; i < lines; i++) {
        puts("hostile: line ");
        put_dec(i);
        putc('\n');
    }
    puts("hostile: flood done\n");
}

int main(const uint8_t *zp)
{
    char mode[32];
    const char *line = cmdline(zp);
    if (!cmdline_get(line, "hostile", mode, sizeof mode))
        fail("no hostile= on the command line");
    announce(mode);
    if (streq(mode, "discard-overlap"))
        discard_overlap(line);
    else if (streq(mode, "zeroes-forever"))
        zeroes_forever(line);
    else if (streq(mode, "indirect-forever"))
        indirect_forever(line);
    else if (streq(mode, "read-forever"))
        read_forever(line);
    else if (streq(mode, "tx-forever"))
        tx_forever(line);
    else if (streq(mode, "rx-outside"))
        rx_outside(line);
    else if (streq(mode, "ports-stdin"))
        ports_stdin(line);
    else if (streq(mode, "ports-tx-forever"))
        ports_tx_forever(line, 5);
    else if (streq(mode, "ports-status-forever"))
        ports_tx_forever(line, 9);
    else if (streq(mode, "ports-control-forever"))
        ports_control_forever(line);
    else if (streq(mode, "mmio-wide"))
        mmio_wide(line);
    else if (streq(mode, "flood"))
        flood(line);
    else
        fail("unknown hostile mode");
    reset();
}
