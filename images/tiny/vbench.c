/*
 * Benchmark driver for the virtio data path; the host times whole runs.
 *   bench=read|write|console|none  bs=<bytes>  total=<bytes>  depth=<n>
 * read/write: sequential block requests of bs bytes covering total bytes
 * (wrapping at the disk's end), depth requests in flight, polling the used
 * ring; the data is never touched.  console: total bytes of 'x' in bs-byte
 * writes on hvc0's transmit queue.  Then "vbench: done <ops> ops" on the
 * UART and power off.  Buffers live at BUFFER_BASE (16 MiB): give the guest
 * at least 128 MiB.
 */
#include "runtime.h"
#include "vio.h"

#define T_IN 0
#define T_OUT 1
#define MAX_DEPTH 64
#define BUFFER_BASE 0x1000000ull
#define BUFFER_LIMIT (64ull << 20)

struct req_header { uint32_t type; uint32_t reserved; uint64_t sector; };

static struct vdev dev;
static volatile struct req_header headers[MAX_DEPTH];
static volatile uint8_t statuses[MAX_DEPTH];

static __attribute__((noreturn)) void fail(const char *why)
{
    puts("vbench: FAIL ");
    puts(why);
    putc('\n');
    debug_exit(1);
}

static uint64_t arg(const char *line, const char *key, uint64_t fallback)
{
    char value[24];
    return cmdline_get(line, key, value, sizeof value) ? parse_dec(value) : fallback;
}

static uint64_t block_bench(int write, uint64_t bs, uint64_t total, uint64_t depth)
{
    struct vq *q = &dev.q[0];
    uint64_t capacity = vio_config64(&dev, 0) * 512;
    uint64_t ops = total / bs, issued = 0, done = 0, offset = 0;
    if (capacity < bs)
        fail("disk smaller than one request");
    /* Slot r uses descriptors 3r (header), 3r+1 (data), 3r+2 (status). */
    uint16_t heads[MAX_DEPTH];
    int pending = 0;
    while (issued < ops && issued < depth) {
        uint64_t r = issued;
        if (offset + bs > capacity)
            offset = 0;
        headers[r].type = write ? T_OUT : T_IN;
        headers[r].sector = offset / 512;
        vq_set(q, (uint16_t)(3 * r), &headers[r], sizeof headers[r], 0, (int)(3 * r + 1));
        vq_set(q, (uint16_t)(3 * r + 1), (void *)(uintptr_t)(BUFFER_BASE + r * bs), (uint32_t)bs,
               !write, (int)(3 * r + 2));
        vq_set(q, (uint16_t)(3 * r + 2), &statuses[r], 1, 1, -1);
        heads[pending++] = (uint16_t)(3 * r);
        offset += bs;
        issued++;
    }
    vq_submit_many(&dev, 0, heads, pending);
    while (done < ops) {
        uint32_t len;
        uint16_t head = vq_wait(q, &len);
        uint64_t r = head / 3;
        if (statuses[r] != 0)
            fail("request failed");
        done++;
        if (issued < ops) {
            if (offset + bs > capacity)
                offset = 0;
            headers[r].sector = offset / 512;
            offset += bs;
            issued++;
            /* Reap what else completed, then resubmit in one notification. */
            heads[0] = head;
            pending = 1;
            uint16_t more;
            while (issued < ops && pending < MAX_DEPTH && vq_poll(q, &more, &len)) {
                uint64_t m = more / 3;
                if (statuses[m] != 0)
                    fail("request failed");
                done++;
                if (offset + bs > capacity)
                    offset = 0;
                headers[m].sector = offset / 512;
                offset += bs;
                issued++;
                heads[pending++] = more;
            }
            vq_submit_many(&dev, 0, heads, pending);
        }
    }
    return ops;
}

static uint64_t console_bench(uint64_t bs, uint64_t total)
{
    struct vq *q = &dev.q[1];
    uint8_t *buf = (uint8_t *)(uintptr_t)BUFFER_BASE;
    for (uint64_t i = 0; i < bs; i++)
        buf[i] = (i % 64 == 63) ? '\n' : 'x';
    uint64_t ops = total / bs;
    for (uint64_t i = 0; i < ops; i++) {
        uint32_t len;
        vq_set(q, 0, buf, (uint32_t)bs, 0, -1);
        vq_submit(&dev, 1, 0);
        vq_wait(q, &len);
    }
    return ops;
}

int main(const uint8_t *zp)
{
    char mode[16] = "none";
    const char *line = cmdline(zp);
    cmdline_get(line, "bench", mode, sizeof mode);
    uint64_t bs = arg(line, "bs", 4096), total = arg(line, "total", 1 << 20);
    uint64_t depth = arg(line, "depth", 1), ops = 0;
    if (depth < 1 || depth > MAX_DEPTH || bs == 0 || bs % 512 || bs * depth > BUFFER_LIMIT)
        fail("bad bs/depth");
    if (streq(mode, "read") || streq(mode, "write")) {
        if (vio_find(line, VIRTIO_ID_BLOCK, &dev) || vio_init(&dev, 0, 1))
            fail("virtio-block set-up");
        ops = block_bench(streq(mode, "write"), bs, total, depth);
    } else if (streq(mode, "console")) {
        if (vio_find(line, VIRTIO_ID_CONSOLE, &dev) || vio_init(&dev, 0, 2))
            fail("virtio-console set-up");
        ops = console_bench(bs, total);
    } else if (!streq(mode, "none")) {
        fail("unknown bench mode");
    }
    puts("vbench: done ");
    put_dec(ops);
    puts(" ops\n");
    reset();
}
