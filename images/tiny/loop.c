/* Never powers off: for --timeout, SIGTERM and Ctrl-A x tests. */
#include "runtime.h"

int main(const uint8_t *zp)
{
    (void)zp;
    puts("pyvmm-tiny: looping\n");
    for (;;)
        __asm__ volatile("cli; hlt");
}
