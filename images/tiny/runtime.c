#include "runtime.h"

#define LSR 5
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

void putc(char c)
{
    while (!(inb(COM1 + LSR) & LSR_THR_EMPTY))
        ;
    outb(COM1, (uint8_t)c);
}

void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

void put_hex(uint64_t value)
{
    char buf[17];
    int i = 16;
    buf[i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[value & 0xf];
        value >>= 4;
    } while (value);
    puts(&buf[i]);
}

void put_dec(uint64_t value)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    puts(&buf[i]);
}

int getc_poll(void)
{
    if (!(inb(COM1 + LSR) & LSR_DATA_READY))
        return -1;
    return inb(COM1);
}

/* Set by the PVH entry (pvh.S) to the address of struct hvm_start_info. */
uint32_t pvh_start_info;

const char *cmdline(const uint8_t *zp)
{
    if (!zp) {   /* PVH boot: hvm_start_info.cmdline_paddr at offset 24 */
        uint64_t addr = pvh_start_info ? *(const volatile uint64_t *)(uintptr_t)(pvh_start_info + 24) : 0;
        return addr ? (const char *)addr : "";
    }
    uint64_t addr = rd32(zp, ZP_CMD_LINE_PTR) | ((uint64_t)rd32(zp, ZP_EXT_CMD_LINE_PTR) << 32);
    return addr ? (const char *)addr : "";
}

int cmdline_get(const char *line, const char *key, char *buf, size_t len)
{
    size_t klen = 0;
    while (key[klen])
        klen++;
    for (const char *p = line; *p; p++) {
        if ((p == line || p[-1] == ' ')) {
            size_t i = 0;
            while (i < klen && p[i] == key[i])
                i++;
            if (i == klen && p[klen] == '=') {
                const char *v = p + klen + 1;
                size_t n = 0;
                while (v[n] && v[n] != ' ' && n + 1 < len) {
                    buf[n] = v[n];
                    n++;
                }
                buf[n] = 0;
                return 1;
            }
        }
    }
    return 0;
}

uint64_t parse_dec(const char *s)
{
    uint64_t value = 0;
    while (*s >= '0' && *s <= '9')
        value = value * 10 + (uint64_t)(*s++ - '0');
    return value;
}

void reset(void)
{
    outb(I8042_COMMAND, 0xfe);
    /* A machine without an i8042 (QEMU microvm) ignores that: say 0 through
       the debug-exit port instead (QEMU then exits 1). */
    outb(DEBUG_EXIT_PORT, 0);
    for (;;)
        __asm__ volatile("hlt");
}

void debug_exit(uint8_t value)
{
    outb(DEBUG_EXIT_PORT, value);
    for (;;)
        __asm__ volatile("hlt");
}

int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* gcc may emit calls to these for loops and struct copies, even freestanding. */
void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

/* A 64-bit interrupt gate (type 0x8E: present, DPL 0) in the guests' one IDT,
   loaded each time: a guest sets the vectors it handles and nothing else. */
struct gate {
    uint16_t offset_low, selector;
    uint8_t ist, type;
    uint16_t offset_mid;
    uint32_t offset_high, zero;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));

void set_interrupt_gate(int vector, void (*handler)(void))
{
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    uint64_t address = (uint64_t)(uintptr_t)handler;
    idt[vector] = (struct gate){
        .offset_low = (uint16_t)address, .selector = cs, .ist = 0, .type = 0x8E,
        .offset_mid = (uint16_t)(address >> 16), .offset_high = (uint32_t)(address >> 32)};
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = {
        sizeof idt - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}
