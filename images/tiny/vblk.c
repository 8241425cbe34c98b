/*
 * Drives the first virtio-block device.  blktest= on the command line:
 *   write-pattern  write sectors 0..N-1 (N = min(capacity, 2048)), byte i of
 *                  sector s = (s*7 + i) & 0xff, in 64 KiB requests; flush;
 *                  print "vblk: wrote N sectors"; power off (i8042 reset)
 *   write-hang     the same, then "vblk: flushed, hanging" and spin forever
 *                  (the host stops us: the data must be on disk anyway)
 *   sha256         read the whole disk, print "vblk: sha256 <hex>"
 *   readonly       try to write sector 0: "vblk: ro-feature <0|1>",
 *                  "vblk: write status <n>"
 *   getid          "vblk: id <serial>"
 *   bounds         read the sector past the end: "vblk: past-end status <n>"
 *   console        "vblk: ready", then commands from the UART: 'w' and a byte
 *                  fills sectors 0..7 with that byte and flushes ("vblk: wrote
 *                  <byte>"), 'r' reads them ("vblk: read <byte>", or "vblk:
 *                  read mixed" when they differ), 's' the whole disk's SHA-256,
 *                  'q' powers off (for snapshots taken at its prompt)
 *   discard        discard sectors 0..capacity-1 in requests of the device's
 *                  max_discard_sectors; flush; "vblk: discarded N sectors"
 *   write-zeroes   write zeroes (no unmap flag) over sectors 0..capacity-1 in
 *                  requests of max_write_zeroes_sectors, flush, read them all
 *                  back: "vblk: zeroed N sectors, read back zero"
 *   persist        if sectors 0..N-1 hold write-pattern's bytes: "vblk: pattern
 *                  found" and debug-exit 0 (status 1); else write them as
 *                  write-pattern does and reset (a reboot: --on-reboot restart)
 * Anything unexpected: "vblk: FAIL ..." and debug-exit status 1.
 */
#include "runtime.h"
#include "vio.h"
#include "sha256.h"

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define F_RO 5
#define F_FLUSH 9
#define F_DISCARD 13
#define F_WRITE_ZEROES 14
/* struct virtio_blk_config offsets of max_discard_sectors, max_write_zeroes_sectors. */
#define CFG_MAX_DISCARD 36
#define CFG_MAX_WRITE_ZEROES 48
#define CHUNK (64 * 1024)

struct req_header { uint32_t type; uint32_t reserved; uint64_t sector; };
struct range { uint64_t sector; uint32_t sectors; uint32_t flags; };

static struct vdev dev;
static volatile struct req_header header;
static volatile uint8_t status;
static volatile struct range segment;
static uint8_t buffer[CHUNK] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void fail(const char *why)
{
    puts("vblk: FAIL ");
    puts(why);
    putc('\n');
    debug_exit(1);
}

/* One request: header, optional data, status; returns the status byte. */
static uint8_t request(uint32_t type, uint64_t sector, void *data, uint32_t len)
{
    struct vq *q = &dev.q[0];
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xee;
    vq_set(q, 0, &header, sizeof header, 0, 1);
    if (len) {
        vq_set(q, 1, data, len, type == T_IN || type == T_GET_ID, 2);
        vq_set(q, 2, &status, 1, 1, -1);
    } else {
        vq_set(q, 1, &status, 1, 1, -1);
    }
    vq_submit(&dev, 0, 0);
    uint32_t used;
    if (vq_wait(q, &used) != 0)
        fail("unexpected used head");
    return status;
}

static void write_pattern(uint64_t capacity)
{
    uint64_t sectors = capacity < 2048 ? capacity : 2048;
    for (uint64_t s = 0; s < sectors; s += CHUNK / 512) {
        uint64_t n = sectors - s < CHUNK / 512 ? sectors - s : CHUNK / 512;
        for (uint64_t k = 0; k < n; k++)
            for (unsigned i = 0; i < 512; i++)
                buffer[k * 512 + i] = (uint8_t)(((s + k) * 7 + i) & 0xff);
        if (request(T_OUT, s, buffer, (uint32_t)(n * 512)) != 0)
            fail("write");
    }
    if (!(dev.features & (1ull << F_FLUSH)))
        fail("no flush feature");
    if (request(T_FLUSH, 0, 0, 0) != 0)
        fail("flush");
    puts("vblk: wrote ");
    put_dec(sectors);
    puts(" sectors\n");
}

static void print_sha256(uint64_t capacity)
{
    struct sha256 ctx;
    uint8_t digest[32];
    sha256_init(&ctx);
    for (uint64_t s = 0; s < capacity; s += CHUNK / 512) {
        uint64_t n = capacity - s < CHUNK / 512 ? capacity - s : CHUNK / 512;
        if (request(T_IN, s, buffer, (uint32_t)(n * 512)) != 0)
            fail("read");
        sha256_update(&ctx, buffer, n * 512);
    }
    sha256_final(&ctx, digest);
    puts("vblk: sha256 ");
    for (int i = 0; i < 32; i++) {
        putc("0123456789abcdef"[digest[i] >> 4]);
        putc("0123456789abcdef"[digest[i] & 15]);
    }
    putc('\n');
}

static int wait_byte(void)
{
    int c;
    while ((c = getc_poll()) < 0)
        __asm__ volatile("pause");
    return c;
}

/* Commands from the UART, one byte each, until 'q'. */
static void console_loop(uint64_t capacity)
{
    puts("vblk: ready\n");
    for (;;) {
        int c = wait_byte();
        if (c == 'q')
            return;
        if (c == 'w') {
            int value = wait_byte();
            for (unsigned i = 0; i < 4096; i++)
                buffer[i] = (uint8_t)value;
            if (request(T_OUT, 0, buffer, 4096) != 0 || request(T_FLUSH, 0, 0, 0) != 0)
                fail("write");
            puts("vblk: wrote ");
            putc((char)value);
            putc('\n');
        } else if (c == 'r') {
            if (request(T_IN, 0, buffer, 4096) != 0)
                fail("read");
            int same = 1;
            for (unsigned i = 1; i < 4096; i++)
                same &= buffer[i] == buffer[0];
            puts("vblk: read ");
            if (same)
                putc((char)buffer[0]);
            else
                puts("mixed");
            putc('\n');
        } else if (c == 's') {
            print_sha256(capacity);
        }
    }
}

/* Discard or write zeroes over the whole disk, max_config sectors a request. */
static void each_range(uint32_t type, int feature, unsigned max_config, uint64_t capacity)
{
    if (!(dev.features & (1ull << feature)))
        fail("feature not offered");
    uint64_t largest = vio_config32(&dev, max_config);
    if (largest == 0)
        fail("max sectors 0");
    for (uint64_t s = 0; s < capacity; s += largest) {
        segment.sector = s;
        segment.sectors = (uint32_t)(capacity - s < largest ? capacity - s : largest);
        segment.flags = 0;
        if (request(type, 0, (void *)&segment, sizeof segment) != 0)
            fail(type == T_DISCARD ? "discard" : "write zeroes");
    }
    if (request(T_FLUSH, 0, 0, 0) != 0)
        fail("flush");
}

/* Whether sectors 0..min(capacity, 2048)-1 hold write_pattern's bytes. */
static int has_pattern(uint64_t capacity)
{
    uint64_t sectors = capacity < 2048 ? capacity : 2048;
    for (uint64_t s = 0; s < sectors; s += CHUNK / 512) {
        uint64_t n = sectors - s < CHUNK / 512 ? sectors - s : CHUNK / 512;
        if (request(T_IN, s, buffer, (uint32_t)(n * 512)) != 0)
            fail("read");
        for (uint64_t k = 0; k < n; k++)
            for (unsigned i = 0; i < 512; i++)
                if (buffer[k * 512 + i] != (uint8_t)(((s + k) * 7 + i) & 0xff))
                    return 0;
    }
    return 1;
}

int main(const uint8_t *zp)
{
    char mode[32];
    const char *line = cmdline(zp);
    if (!cmdline_get(line, "blktest", mode, sizeof mode))
        fail("no blktest= on the command line");
    if (vio_find(line, VIRTIO_ID_BLOCK, &dev))
        fail("no virtio-block device announced");
    if (vio_init(&dev, (1ull << F_RO) | (1ull << F_FLUSH) | (1ull << F_DISCARD)
                 | (1ull << F_WRITE_ZEROES), 1))
        fail("device set-up");
    uint64_t capacity = vio_config64(&dev, 0);
    if (streq(mode, "write-pattern") || streq(mode, "write-hang")) {
        write_pattern(capacity);
        if (streq(mode, "write-hang")) {
            puts("vblk: flushed, hanging\n");
            for (;;)
                __asm__ volatile("pause");
        }
    } else if (streq(mode, "sha256")) {
        print_sha256(capacity);
    } else if (streq(mode, "console")) {
        console_loop(capacity);
    } else if (streq(mode, "readonly")) {
        puts("vblk: ro-feature ");
        put_dec((dev.offered >> F_RO) & 1);
        putc('\n');
        for (unsigned i = 0; i < 512; i++)
            buffer[i] = 0x5a;
        puts("vblk: write status ");
        put_dec(request(T_OUT, 0, buffer, 512));
        putc('\n');
    } else if (streq(mode, "getid")) {
        char id[21];
        for (int i = 0; i < 21; i++)
            id[i] = 0;
        if (request(T_GET_ID, 0, id, 20) != 0)
            fail("get-id");
        puts("vblk: id ");
        puts(id);
        putc('\n');
    } else if (streq(mode, "bounds")) {
        puts("vblk: past-end status ");
        put_dec(request(T_IN, capacity, buffer, 512));
        putc('\n');
    } else if (streq(mode, "discard")) {
        each_range(T_DISCARD, F_DISCARD, CFG_MAX_DISCARD, capacity);
        puts("vblk: discarded ");
        put_dec(capacity);
        puts(" sectors\n");
    } else if (streq(mode, "write-zeroes")) {
        each_range(T_WRITE_ZEROES, F_WRITE_ZEROES, CFG_MAX_WRITE_ZEROES, capacity);
        for (uint64_t s = 0; s < capacity; s += CHUNK / 512) {
            uint64_t n = capacity - s < CHUNK / 512 ? capacity - s : CHUNK / 512;
            if (request(T_IN, s, buffer, (uint32_t)(n * 512)) != 0)
                fail("read");
            const uint64_t *words = (const uint64_t *)buffer;
            for (uint64_t i = 0; i < n * 512 / 8; i++)
                if (words[i])
                    fail("a written-zero byte reads back non-zero");
        }
        puts("vblk: zeroed ");
        put_dec(capacity);
        puts(" sectors, read back zero\n");
    } else if (streq(mode, "persist")) {
        if (has_pattern(capacity)) {
            puts("vblk: pattern found\n");
            debug_exit(0);
        }
        write_pattern(capacity);
    } else {
        fail("unknown blktest mode");
    }
    reset();
}
