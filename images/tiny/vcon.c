/*
 * Uses the virtio console (port 0, hvc0) as its only console: writes
 * "vcon: hello from hvc0" on the transmit queue; with contest=echo it posts a
 * receive buffer, waits for host input and writes back "vcon: got <bytes>"
 * (up to a newline or 64 bytes).  Then powers off.  The UART is used only
 * for "vcon: FAIL ..." lines.
 */
#include "runtime.h"
#include "vio.h"

#define RXQ 0
#define TXQ 1

static struct vdev dev;
static char txbuf[256];
static char rxbuf[64];

static __attribute__((noreturn)) void fail(const char *why)
{
    puts("vcon: FAIL ");
    puts(why);
    putc('\n');
    debug_exit(1);
}

static void send(const char *text, size_t len)
{
    uint32_t used;
    for (size_t i = 0; i < len && i < sizeof txbuf; i++)
        txbuf[i] = text[i];
    vq_set(&dev.q[TXQ], 0, txbuf, (uint32_t)len, 0, -1);
    vq_submit(&dev, TXQ, 0);
    vq_wait(&dev.q[TXQ], &used);
}

static size_t length(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int main(const uint8_t *zp)
{
    char mode[16];
    const char *line = cmdline(zp);
    if (vio_find(line, VIRTIO_ID_CONSOLE, &dev))
        fail("no virtio-console device announced");
    if (vio_init(&dev, 0, 2))
        fail("device set-up");
    static const char hello[] = "vcon: hello from hvc0\n";
    send(hello, sizeof hello - 1);
    if (cmdline_get(line, "contest", mode, sizeof mode) && streq(mode, "echo")) {
        char got[128] = "vcon: got ";
        size_t n = length(got);
        while (n < sizeof got - 2) {
            uint32_t len;
            vq_set(&dev.q[RXQ], 0, rxbuf, sizeof rxbuf, 1, -1);
            vq_submit(&dev, RXQ, 0);
            vq_wait(&dev.q[RXQ], &len);
            int done = 0;
            for (uint32_t i = 0; i < len && n < sizeof got - 2; i++) {
                if (rxbuf[i] == '\n' || rxbuf[i] == '\r') {
                    done = 1;
                    break;
                }
                got[n++] = rxbuf[i];
            }
            if (done)
                break;
        }
        got[n++] = '\n';
        send(got, n);
    }
    reset();
}
