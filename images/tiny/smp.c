/*
 * Starts every other vCPU with INIT-SIPI-SIPI through the local APIC (the
 * in-kernel one) and has each print its APIC ID, as a kernel's SMP boot does.
 * cpus=N on the command line says how many to expect (default: the count of
 * enabled local APICs in the MADT).  Prints "smp: cpu <apic id> up" per AP
 * and "smp: N cpus up" from the boot CPU, then resets.
 */
#include "runtime.h"

#define LAPIC 0xFEE00000ull
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_INIT (5u << 8)
#define ICR_STARTUP (6u << 8)
#define ICR_ASSERT (1u << 14)
#define ICR_LEVEL (1u << 15)
#define ICR_BUSY (1u << 12)
#define TRAMPOLINE 0x8000

extern const uint8_t ap_trampoline[], ap_trampoline_end[];
static volatile uint32_t started;
static volatile uint32_t print_lock;

static volatile uint32_t *lapic(unsigned reg) { return (volatile uint32_t *)(uintptr_t)(LAPIC + reg); }

static void lock(void)
{
    while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE))
        __asm__ volatile("pause");
}

static void unlock(void) { __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE); }

void ap_main(void)
{
    uint32_t id = *lapic(LAPIC_ID) >> 24;
    lock();
    puts("smp: cpu ");
    put_dec(id);
    puts(" up\n");
    unlock();
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void ipi(uint32_t command)
{
    *lapic(LAPIC_ICR_HIGH) = 0;
    *lapic(LAPIC_ICR_LOW) = command;
    while (*lapic(LAPIC_ICR_LOW) & ICR_BUSY)
        __asm__ volatile("pause");
}

static void spin(unsigned n)
{
    for (volatile unsigned i = 0; i < n; i++)
        __asm__ volatile("pause");
}

static unsigned madt_cpus(void)
{
    for (uint64_t a = 0xE0000; a < 0x100000; a += 16) {
        const char *p = (const char *)(uintptr_t)a;
        if (p[0] == 'R' && p[1] == 'S' && p[2] == 'D' && p[3] == ' ') {
            const uint8_t *xsdt = (const uint8_t *)(uintptr_t)*(const uint64_t *)(p + 24);
            for (uint32_t off = 36; off < *(const uint32_t *)(xsdt + 4); off += 8) {
                const uint8_t *t = (const uint8_t *)(uintptr_t)*(const uint64_t *)(xsdt + off);
                if (t[0] != 'A' || t[1] != 'P' || t[2] != 'I' || t[3] != 'C')
                    continue;
                unsigned n = 0;
                for (uint32_t o = 44; o < *(const uint32_t *)(t + 4) && t[o + 1]; o += t[o + 1])
                    n += t[o] == 0 && (t[o + 4] & 1);
                return n;
            }
        }
    }
    return 1;
}

int main(const uint8_t *zp)
{
    char value[8];
    unsigned cpus = cmdline_get(cmdline(zp), "cpus", value, sizeof value)
        ? (unsigned)parse_dec(value) : madt_cpus();
    uint8_t *dst = (uint8_t *)(uintptr_t)TRAMPOLINE;
    for (const uint8_t *p = ap_trampoline; p < ap_trampoline_end; p++)
        *dst++ = *p;
    *lapic(LAPIC_SVR) = 0x1FF;          /* software-enable the local APIC */
    puts("smp: boot cpu ");
    put_dec(*lapic(LAPIC_ID) >> 24);
    puts(", starting ");
    put_dec(cpus - 1);
    puts(" more\n");
    ipi(ICR_ALL_BUT_SELF | ICR_INIT | ICR_ASSERT | ICR_LEVEL);
    spin(1000);
    ipi(ICR_ALL_BUT_SELF | ICR_INIT | ICR_LEVEL);   /* de-assert */
    spin(1000);
    for (int i = 0; i < 2; i++) {
        ipi(ICR_ALL_BUT_SELF | ICR_STARTUP | (TRAMPOLINE >> 12));
        spin(1000);
    }
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < cpus - 1)
        __asm__ volatile("pause");
    lock();
    puts("smp: ");
    put_dec(cpus);
    puts(" cpus up\n");
    unlock();
    reset();
}
