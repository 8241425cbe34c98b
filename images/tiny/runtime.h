/* The few things a tiny guest needs: port I/O, the UART, the command line. */
#ifndef PYVMM_TINY_RUNTIME_H
#define PYVMM_TINY_RUNTIME_H

#include <stdint.h>
#include <stddef.h>

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4
#define I8042_COMMAND 0x64

/* struct boot_params offsets (Documentation/arch/x86/zero-page.rst). */
#define ZP_EXT_RAMDISK_IMAGE 0x0c0
#define ZP_EXT_RAMDISK_SIZE  0x0c4
#define ZP_EXT_CMD_LINE_PTR  0x0c8
#define ZP_E820_ENTRIES      0x1e8
#define ZP_HEADER_MAGIC      0x202
#define ZP_TYPE_OF_LOADER    0x210
#define ZP_RAMDISK_IMAGE     0x218
#define ZP_RAMDISK_SIZE      0x21c
#define ZP_CMD_LINE_PTR      0x228
#define ZP_E820_TABLE        0x2d0

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline uint32_t rd32(const uint8_t *zp, unsigned offset)
{
    return *(const volatile uint32_t *)(zp + offset);
}

void putc(char c);
void puts(const char *s);            /* no newline added */
void put_hex(uint64_t value);
void put_dec(uint64_t value);
int getc_poll(void);                 /* -1 when no byte is waiting */
const char *cmdline(const uint8_t *zp);
/* Value of "key=" on the command line, copied into buf; 0 if absent. */
int cmdline_get(const char *line, const char *key, char *buf, size_t len);
uint64_t parse_dec(const char *s);
int streq(const char *a, const char *b);
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
/* Point IDT vector at handler (an interrupt gate in the code segment running now). */
void set_interrupt_gate(int vector, void (*handler)(void));
__attribute__((noreturn)) void reset(void);
__attribute__((noreturn)) void debug_exit(uint8_t value);

#endif
