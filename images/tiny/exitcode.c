/* Reports exitcode=N (default 0x10) through the debug-exit port. */
#include "runtime.h"

int main(const uint8_t *zp)
{
    char value[24];
    uint64_t code = 0x10;
    if (cmdline_get(cmdline(zp), "exitcode", value, sizeof value))
        code = parse_dec(value);
    puts("pyvmm-tiny: exit ");
    put_dec(code);
    putc('\n');
    debug_exit((uint8_t)code);
}
