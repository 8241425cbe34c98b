/* The guest's own int3s, handled by its own #BP handler: what a debugger
   attached to the VMM must pass through (a kernel's text_poke, kprobes, its
   int3 self-test).  Executes `count=N` (default 3) int3s, each followed by the
   label int3_return; the handler counts them and checks the return address
   the CPU pushed is that label (the instruction after the int3), then
   `int3_report` prints `int3: N of N handled, return address ok|WRONG` and
   the guest writes N to the debug-exit port. */
#include "runtime.h"

struct gate {
    uint16_t offset_low, selector;
    uint8_t ist, type;
    uint16_t offset_mid;
    uint32_t offset_high, zero;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));
volatile uint64_t int3_handled, int3_wrong_return;

__asm__(".text\n"
        ".globl bp_entry\n"
        "bp_entry:\n"
        "  push %rax\n"
        "  incq int3_handled(%rip)\n"
        "  lea int3_return(%rip), %rax\n"
        "  cmp 8(%rsp), %rax\n"            /* the RIP the CPU pushed */
        "  je 1f\n"
        "  incq int3_wrong_return(%rip)\n"
        "1: pop %rax\n"
        "  iretq\n");
void bp_entry(void);

/* Not inlined: tests put a debugger's breakpoint here, after the int3s. */
__attribute__((noinline)) void int3_report(uint64_t count)
{
    puts("int3: ");
    put_dec(int3_handled);
    puts(" of ");
    put_dec(count);
    puts(int3_wrong_return ? " handled, return address WRONG\n"
                           : " handled, return address ok\n");
}

int main(const uint8_t *zp)
{
    char value[16];
    uint64_t count = cmdline_get(cmdline(zp), "count", value, sizeof value) ? parse_dec(value) : 3;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    uint64_t address = (uint64_t)(uintptr_t)bp_entry;
    idt[3] = (struct gate){
        .offset_low = (uint16_t)address, .selector = cs, .ist = 0, .type = 0x8E,
        .offset_mid = (uint16_t)(address >> 16), .offset_high = (uint32_t)(address >> 32)};
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = {
        sizeof idt - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
    for (uint64_t i = 0; i < count; i++)
        __asm__ volatile("int3\n.globl int3_return\nint3_return:" : : : "memory");
    int3_report(count);
    debug_exit((uint8_t)int3_handled);
}
