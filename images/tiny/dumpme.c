/*
 * Leaves known evidence for the dump tests, then triple-faults:
 *   physical 0x2000000: 4 KiB of "PYVMM-DUMP-PATTERN:" + the page offset;
 *   page tables (new CR3) mapping virtual 0xffff800000005000 to that page
 *   with a 4 KiB page, and 0xffff800000200000 to physical 0x2200000 with a
 *   2 MiB page (where "PYVMM-2M-PAGE" sits at offset 0x1234).
 * Prints "dumpme: cr3=<new cr3>" before the fault.
 */
#include "runtime.h"

#define PATTERN_PHYS 0x2000000ull
#define BIG_PAGE_PHYS 0x2200000ull

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[512] __attribute__((aligned(4096)));
static uint64_t pt[512] __attribute__((aligned(4096)));

int main(const uint8_t *zp)
{
    (void)zp;
    static const char tag[] = "PYVMM-DUMP-PATTERN:";
    char *page = (char *)(uintptr_t)PATTERN_PHYS;
    for (unsigned off = 0; off < 4096; off += 32) {
        for (unsigned i = 0; i < sizeof tag - 1; i++)
            page[off + i] = tag[i];
        for (unsigned i = 0; i < 4; i++)
            page[off + 19 + i] = "0123456789abcdef"[(off >> (12 - 4 * i)) & 15];
        for (unsigned i = 23; i < 32; i++)
            page[off + i] = '.';
    }
    static const char big[] = "PYVMM-2M-PAGE";
    for (unsigned i = 0; i < sizeof big; i++)
        ((char *)(uintptr_t)(BIG_PAGE_PHYS + 0x1234))[i] = big[i];

    uint64_t old_cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(old_cr3));
    pml4[0] = ((uint64_t *)(uintptr_t)(old_cr3 & ~0xfffull))[0];  /* keep our identity map */
    pml4[256] = (uint64_t)(uintptr_t)pdpt | 3;
    pdpt[0] = (uint64_t)(uintptr_t)pd | 3;
    pd[0] = (uint64_t)(uintptr_t)pt | 3;
    pd[1] = BIG_PAGE_PHYS | 0x83;           /* 2 MiB page */
    pt[5] = PATTERN_PHYS | 3;               /* 4 KiB page */
    __asm__ volatile("mov %0, %%cr3" : : "r"((uint64_t)(uintptr_t)pml4) : "memory");
    if (*(volatile char *)0xffff800000005000ull != 'P')
        debug_exit(1);
    puts("dumpme: cr3=0x");
    put_hex((uint64_t)(uintptr_t)pml4);
    putc('\n');
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idt = {0, 0};
    __asm__ volatile("lidt %0; ud2" : : "m"(idt));
    for (;;)
        ;
}
