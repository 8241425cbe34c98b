/*
 * Interrupt-driven output on COM1, as Linux's 8250 driver does it for user
 * space: IER's THR-empty bit on, and in the interrupt handler (IRQ 4 through
 * the IOAPIC, vector 0x24) IIR, LSR and MSR read and up to 16 bytes written
 * to THR per pass, until IIR says nothing is pending; when the text is out,
 * the THR-empty bit goes off again.  bytes=N (default 4096) says how much:
 * 64-byte lines "uartirq NNNNNN <48 letters>\n".  Then, polled (LSR, then
 * THR, as printk's console), the first polled=N (default 0) bytes of the same
 * text, and "uartirq: done N bytes, I interrupts, P passes"; then it resets.
 */
#include "runtime.h"

#define LAPIC 0xFEE00000ull
#define LAPIC_SVR 0x0F0
#define LAPIC_EOI 0x0B0
#define IOAPIC 0xFEC00000ull
#define UART_VECTOR 0x24
#define SPURIOUS_VECTOR 0xFF
#define IER 1
#define IIR 2
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6
#define IER_THRI 0x02

static volatile uint64_t sent, total, interrupts, passes;
static volatile int done;

/* Interrupt entry: save the caller-saved registers, call the handler, iretq.
   (The CPU's 40-byte frame plus 9 pushes leave RSP 16-byte aligned.) */
__asm__(".text\n"
        ".globl uart_entry\n"
        "uart_entry:\n"
        "  push %rax\n push %rcx\n push %rdx\n push %rsi\n push %rdi\n"
        "  push %r8\n push %r9\n push %r10\n push %r11\n"
        "  cld\n"
        "  call uart_interrupt\n"
        "  pop %r11\n pop %r10\n pop %r9\n pop %r8\n"
        "  pop %rdi\n pop %rsi\n pop %rdx\n pop %rcx\n pop %rax\n"
        "  iretq\n"
        ".globl spurious_entry\n"
        "spurious_entry:\n"
        "  iretq\n");
void uart_entry(void);
void spurious_entry(void);

static volatile uint32_t *lapic(unsigned reg) { return (volatile uint32_t *)(uintptr_t)(LAPIC + reg); }

static void ioapic_write(uint32_t reg, uint32_t value)
{
    *(volatile uint32_t *)(uintptr_t)IOAPIC = reg;
    *(volatile uint32_t *)(uintptr_t)(IOAPIC + 0x10) = value;
}

static char text_byte(uint64_t i)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
    uint64_t line = i / 64, col = i % 64;
    if (col < 8)
        return "uartirq "[col];
    if (col < 14) {
        for (uint64_t k = 13; k > col; k--)
            line /= 10;
        return (char)('0' + line % 10);
    }
    if (col == 14)
        return ' ';
    if (col == 63)
        return '\n';
    return letters[col - 15];
}

void uart_interrupt(void)
{
    interrupts++;
    for (;;) {
        uint8_t iir = inb(COM1 + IIR);
        if (iir & 1)
            break;
        passes++;
        uint8_t lsr = inb(COM1 + LSR);
        (void)inb(COM1 + MSR);
        if ((iir & 0x0E) == 0x02 && (lsr & 0x20)) {
            for (int n = 0; n < 16 && sent < total; n++)
                outb(COM1, (uint8_t)text_byte(sent++));
            if (sent == total) {
                outb(COM1 + IER, 0);
                done = 1;
            }
        }
    }
    *lapic(LAPIC_EOI) = 0;
}

int main(const uint8_t *zp)
{
    char value[16];
    total = cmdline_get(cmdline(zp), "bytes", value, sizeof value) ? parse_dec(value) : 4096;
    set_interrupt_gate(UART_VECTOR, uart_entry);
    set_interrupt_gate(SPURIOUS_VECTOR, spurious_entry);

    outb(0x21, 0xFF);                   /* the 8259s masked: the IOAPIC delivers */
    outb(0xA1, 0xFF);
    *lapic(LAPIC_SVR) = 0x100 | SPURIOUS_VECTOR;
    ioapic_write(0x10 + 2 * 4 + 1, 0);  /* IRQ 4 to APIC ID 0 */
    ioapic_write(0x10 + 2 * 4, UART_VECTOR);  /* fixed, edge, active high, unmasked */

    outb(COM1 + LCR, 0x03);             /* 8N1 */
    outb(COM1 + FCR, 0x07);             /* FIFOs on and cleared */
    outb(COM1 + MCR, 0x0B);             /* DTR, RTS, OUT2 (the PC's interrupt gate) */
    outb(COM1 + IER, IER_THRI);         /* THR is empty: the first interrupt comes */
    for (;;) {
        __asm__ volatile("cli");
        if (done)
            break;
        __asm__ volatile("sti; hlt");
    }
    uint64_t polled = cmdline_get(cmdline(zp), "polled", value, sizeof value)
        ? parse_dec(value) : 0;
    for (uint64_t i = 0; i < polled; i++)
        putc(text_byte(i));
    puts("uartirq: done ");
    put_dec(sent);
    puts(" bytes, ");
    put_dec(interrupts);
    puts(" interrupts, ");
    put_dec(passes);
    puts(" passes\n");
    reset();
}
