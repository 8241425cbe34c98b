/* Loads an empty IDT and executes ud2: no handler, no double-fault handler: triple fault. */
#include "runtime.h"

int main(const uint8_t *zp)
{
    (void)zp;
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idt = {0, 0};
    puts("pyvmm-tiny: triple fault\n");
    __asm__ volatile("lidt %0; ud2" : : "m"(idt));
    for (;;)
        ;
}
