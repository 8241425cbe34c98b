/* Echoes what arrives on the UART until 'q', then resets. */
#include "runtime.h"

int main(const uint8_t *zp)
{
    (void)zp;
    puts("pyvmm-tiny: echo ready\n");
    for (;;) {
        int c = getc_poll();
        if (c < 0) {
            __asm__ volatile("pause");
            continue;
        }
        if (c == 'q')
            break;
        putc((char)c);
    }
    puts("\npyvmm-tiny: bye\n");
    reset();
}
