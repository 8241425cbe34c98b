/* Checks what the boot protocol promised and prints it for the host test. */
#include "runtime.h"

#define INITRD_MAGIC "PYVMMRD1"

static int failures;

static void fail(const char *what)
{
    puts("FAIL ");
    puts(what);
    putc('\n');
    failures++;
}

static uint32_t fnv1a(const uint8_t *p, uint64_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (uint64_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

static void check_initrd(const uint8_t *zp)
{
    uint64_t addr = rd32(zp, ZP_RAMDISK_IMAGE) | ((uint64_t)rd32(zp, ZP_EXT_RAMDISK_IMAGE) << 32);
    uint64_t size = rd32(zp, ZP_RAMDISK_SIZE) | ((uint64_t)rd32(zp, ZP_EXT_RAMDISK_SIZE) << 32);
    if (!addr || !size) {
        puts("initrd: none\n");
        return;
    }
    const uint8_t *rd = (const uint8_t *)addr;
    puts("initrd: addr=");
    put_hex(addr);
    puts(" size=");
    put_dec(size);
    puts(" sum=");
    put_hex(fnv1a(rd, size));
    putc('\n');
    for (int i = 0; i < 8; i++)
        if (rd[i] != (uint8_t)INITRD_MAGIC[i])
            return;  /* not our checked format: nothing more to verify */
    uint32_t len = *(const uint32_t *)(rd + 8);
    if (12 + (uint64_t)len + 4 > size) {
        fail("initrd length");
        return;
    }
    uint32_t want = *(const uint32_t *)(rd + 12 + len);
    if (fnv1a(rd + 12, len) == want)
        puts("initrd check ok\n");
    else
        fail("initrd check");
}

int main(const uint8_t *zp)
{
    puts("pyvmm-tiny: hello\n");
    if (rd32(zp, ZP_HEADER_MAGIC) == 0x53726448u)  /* "HdrS" */
        puts("check hdrs ok\n");
    else
        fail("hdrs");
    if (zp[ZP_TYPE_OF_LOADER] == 0xff)
        puts("check loader ok\n");
    else
        fail("type_of_loader");

    puts("cmdline: ");
    puts(cmdline(zp));
    putc('\n');

    unsigned n = zp[ZP_E820_ENTRIES];
    puts("e820: ");
    put_dec(n);
    puts(" entries\n");
    if (n == 0 || n > 128)
        fail("e820 count");
    for (unsigned i = 0; i < n && i < 128; i++) {
        const uint8_t *e = zp + ZP_E820_TABLE + 20 * i;
        puts("e820 ");
        put_hex(*(const uint64_t *)e);
        putc(' ');
        put_hex(*(const uint64_t *)(e + 8));
        putc(' ');
        put_dec(*(const uint32_t *)(e + 16));
        putc('\n');
    }

    check_initrd(zp);
    if (failures)
        debug_exit(1);
    puts("pyvmm-tiny: done\n");
    reset();
}
