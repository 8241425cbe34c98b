/* The guest's own int3s, handled by its own #BP handler: what a debugger
   attached to the VMM must pass through (a kernel's text_poke, kprobes, its
   int3 self-test).  Executes `count=N` (default 3) int3s, each followed by the
   label int3_return; the handler counts them and checks the return address
   the CPU pushed is that label (the instruction after the int3), then
   `int3_report` prints `int3: N of N handled, return address ok|WRONG` and
   the guest writes N to the debug-exit port. */
#include "runtime.h"

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
    set_interrupt_gate(3, bp_entry);
    for (uint64_t i = 0; i < count; i++)
        __asm__ volatile("int3\n.globl int3_return\nint3_return:" : : : "memory");
    int3_report(count);
    debug_exit((uint8_t)int3_handled);
}
