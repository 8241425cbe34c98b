"""The CMOS RTC as Linux's rtc_cmos uses it: /dev/rtc0, its time, update and alarm interrupts.

Runs a probe in command mode under Debian's kernel (rtc_cmos built in; our
minimal kernel has no RTC driver); needs hardware KVM (the rig).  Linux emulates periodic
and update interrupts with its own timers, and both reach the chip as
alarms: what the guest waits for here are real IRQ 8s from pyvmm's RTC.
"""

from __future__ import annotations

import json
import time

import pytest

from .conftest import KERNELS
from .test_command_mode import command

PROBE = r"""
import fcntl, json, os, struct, time, calendar
RTC_RD_TIME, RTC_UIE_ON, RTC_UIE_OFF = 0x80247009, 0x7003, 0x7004
RTC_ALM_SET, RTC_AIE_ON, RTC_AIE_OFF = 0x40247007, 0x7001, 0x7002
fd = os.open("/dev/rtc0", os.O_RDONLY)
sec, minute, hour, mday, mon, year = struct.unpack("9i", fcntl.ioctl(fd, RTC_RD_TIME, bytes(36)))[:6]
guest_now = time.time()
rtc = calendar.timegm((year + 1900, mon + 1, mday, hour, minute, sec, 0, 0, 0))
fcntl.ioctl(fd, RTC_UIE_ON, 0)
start = time.monotonic()
updates = [struct.unpack("L", os.read(fd, 8))[0] for _ in range(2)]
update_seconds = time.monotonic() - start
fcntl.ioctl(fd, RTC_UIE_OFF, 0)
alarm = time.gmtime(time.time() + 3)
fcntl.ioctl(fd, RTC_ALM_SET, struct.pack("9i", alarm.tm_sec, alarm.tm_min, alarm.tm_hour,
                                          0, 0, 0, 0, 0, 0))
fcntl.ioctl(fd, RTC_AIE_ON, 0)
start = time.monotonic()
fired = struct.unpack("L", os.read(fd, 8))[0]
alarm_seconds = time.monotonic() - start
fcntl.ioctl(fd, RTC_AIE_OFF, 0)
print(json.dumps({"rtc": rtc, "guest_now": guest_now, "update_seconds": update_seconds,
                  "updates": updates, "alarm_seconds": alarm_seconds, "alarm": fired}))
"""


def test_the_guest_reads_the_hosts_time_and_gets_update_and_alarm_interrupts() -> None:
    kernel = KERNELS["debian"]
    if not kernel.exists():
        pytest.skip("Debian's kernel is not installed")
    result = command(str(kernel), "python3", "-c", PROBE)
    assert result.status == 0, result.stderr.decode(errors="replace")
    seen = json.loads(result.stdout)
    assert abs(seen["rtc"] - time.time()) < 600            # the same day and hour as the host
    assert abs(seen["rtc"] - seen["guest_now"]) <= 2       # and as the guest's own clock
    # Two update interrupts take one to two seconds (the first may come at once).
    assert 0.5 <= seen["update_seconds"] <= 4.0
    assert all(value & 0x10 for value in seen["updates"])  # RTC_UF
    # The alarm, set 3 s ahead at whole-second precision, fires 2-4 s later.
    assert 1.5 <= seen["alarm_seconds"] <= 5.0
    assert seen["alarm"] & 0x20                            # RTC_AF
