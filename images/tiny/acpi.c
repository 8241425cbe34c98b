/*
 * Finds the platform through the ACPI tables pyvmm wrote, as a kernel does:
 * scans 0xE0000-0xFFFFF for the RSDP, follows RSDP -> XSDT -> FADT/MADT and
 * FADT -> DSDT, and checks every checksum.  acpitest= on the command line:
 *   walk      print "acpi: ok cpus=N virtio=M pvpanic=0xPORT sleep=0xPORT",
 *             then reset
 *   poweroff  write SLP_TYP 5 | SLP_EN to the FADT's sleep control register
 *   panic     write PANICKED to the pvpanic port the DSDT names
 * Failures: "acpi: FAIL ..." and debug-exit status 1.
 */
#include "runtime.h"

static __attribute__((noreturn)) void fail(const char *why)
{
    puts("acpi: FAIL ");
    puts(why);
    putc('\n');
    debug_exit(1);
}

static const uint8_t *phys(uint64_t addr) { return (const uint8_t *)(uintptr_t)addr; }
static uint32_t u32(const uint8_t *p) { return *(const uint32_t *)p; }
static uint64_t u64(const uint8_t *p) { return *(const uint64_t *)p; }
static uint16_t u16(const uint8_t *p) { return *(const uint16_t *)p; }

static int sums_to_zero(const uint8_t *p, uint32_t len)
{
    uint8_t sum = 0;
    for (uint32_t i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return sum == 0;
}

static int sig(const uint8_t *p, const char *s)
{
    return p[0] == s[0] && p[1] == s[1] && p[2] == s[2] && p[3] == s[3];
}

static const uint8_t *checked_table(uint64_t addr, const char *signature)
{
    const uint8_t *t = phys(addr);
    if (!sig(t, signature))
        fail(signature);
    if (!sums_to_zero(t, u32(t + 4)))
        fail("table checksum");
    return t;
}

int main(const uint8_t *zp)
{
    char mode[16] = "walk";
    cmdline_get(cmdline(zp), "acpitest", mode, sizeof mode);
    const uint8_t *rsdp = 0;
    for (uint64_t a = 0xE0000; a < 0x100000; a += 16) {
        const uint8_t *p = phys(a);
        if (sig(p, "RSD ") && sig(p + 4, "PTR ")) {
            rsdp = p;
            break;
        }
    }
    if (!rsdp)
        fail("no RSDP in 0xE0000-0xFFFFF");
    if (!sums_to_zero(rsdp, 20) || !sums_to_zero(rsdp, u32(rsdp + 20)) || rsdp[15] < 2)
        fail("RSDP checksum or revision");
    const uint8_t *xsdt = checked_table(u64(rsdp + 24), "XSDT");
    const uint8_t *fadt = 0, *madt = 0;
    for (uint32_t off = 36; off < u32(xsdt + 4); off += 8) {
        const uint8_t *t = phys(u64(xsdt + off));
        if (sig(t, "FACP"))
            fadt = checked_table(u64(xsdt + off), "FACP");
        else if (sig(t, "APIC"))
            madt = checked_table(u64(xsdt + off), "APIC");
    }
    if (!fadt || !madt)
        fail("XSDT lacks FACP or APIC");
    const uint8_t *dsdt = checked_table(u64(fadt + 140), "DSDT");
    unsigned cpus = 0, virtio = 0, pvpanic = 0;
    for (uint32_t off = 44; off + 2 <= u32(madt + 4); off += madt[off + 1]) {
        if (madt[off] == 0 && (u32(madt + off + 4) & 1))
            cpus++;
        if (madt[off + 1] == 0)
            fail("MADT entry of length 0");
    }
    uint32_t dlen = u32(dsdt + 4);
    for (uint32_t i = 36; i + 8 <= dlen; i++) {
        if (sig(dsdt + i, "LNRO") && sig(dsdt + i + 4, "0005"))
            virtio++;
        if (sig(dsdt + i, "QEMU") && sig(dsdt + i + 4, "0001")) {
            /* The next IO descriptor (0x47) after the _HID holds the port. */
            for (uint32_t j = i; j + 8 <= dlen; j++)
                if (dsdt[j] == 0x47 && dsdt[j + 1] == 0x01) {
                    pvpanic = u16(dsdt + j + 2);
                    break;
                }
        }
    }
    if (!(u32(fadt + 112) & (1u << 20)))
        fail("FADT is not hardware-reduced");
    const uint8_t *sleep = fadt + 244;   /* GAS: space, width, offset, access, address */
    if (sleep[0] != 1)
        fail("sleep control register is not in I/O space");
    uint16_t sleep_port = (uint16_t)u64(sleep + 4);
    if (streq(mode, "walk")) {
        puts("acpi: ok cpus=");
        put_dec(cpus);
        puts(" virtio=");
        put_dec(virtio);
        puts(" pvpanic=0x");
        put_hex(pvpanic);
        puts(" sleep=0x");
        put_hex(sleep_port);
        putc('\n');
        reset();
    }
    if (streq(mode, "poweroff")) {
        puts("acpi: powering off\n");
        outb(sleep_port, (uint8_t)((5 << 2) | (1 << 5)));
        fail("still running after the S5 write");
    }
    if (streq(mode, "panic")) {
        if (!pvpanic)
            fail("no pvpanic device in the DSDT");
        puts("acpi: panicking\n");
        outb(pvpanic, 1);
        fail("still running after the pvpanic write");
    }
    fail("unknown acpitest mode");
}
