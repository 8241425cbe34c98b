/*
 * Reads the CMOS RTC as Linux's mc146818 code does: waits for UIP clear,
 * reads the time in whatever mode register B says, prints
 * "rtc: 20YY-MM-DD HH:MM:SS", then polls register C (no interrupts) until
 * it has seen two update-ended flags and a periodic flag, prints
 * "rtc: updates 2 periodic 1", and resets.
 */
#include "runtime.h"

#define RTC_INDEX 0x70
#define RTC_DATA  0x71

static uint8_t rtc(uint8_t index)
{
    outb(RTC_INDEX, index);
    return inb(RTC_DATA);
}

static unsigned field(uint8_t raw, int binary)
{
    return binary ? raw : (unsigned)(raw >> 4) * 10 + (raw & 0x0f);
}

static void put2(unsigned value)
{
    putc((char)('0' + value / 10 % 10));
    putc((char)('0' + value % 10));
}

int main(const uint8_t *zp)
{
    (void)zp;
    while (rtc(0x0a) & 0x80)
        ;
    uint8_t b = rtc(0x0b);
    int binary = b & 0x04;
    unsigned sec = field(rtc(0x00), binary), min = field(rtc(0x02), binary);
    unsigned hour = field(rtc(0x04), binary), day = field(rtc(0x07), binary);
    unsigned mon = field(rtc(0x08), binary), year = field(rtc(0x09), binary);
    unsigned century = field(rtc(0x32), binary);
    puts("rtc: ");
    put2(century); put2(year); putc('-'); put2(mon); putc('-'); put2(day); putc(' ');
    put2(hour); putc(':'); put2(min); putc(':'); put2(sec); putc('\n');

    rtc(0x0c);                      /* clear the flags */
    unsigned updates = 0, periodic = 0;
    while (updates < 2) {
        uint8_t c = rtc(0x0c);
        updates += (c & 0x10) != 0;
        periodic |= (c & 0x40) != 0;
    }
    puts("rtc: updates 2 periodic ");
    put_dec(periodic);
    putc('\n');
    reset();
}
