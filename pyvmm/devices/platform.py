"""Platform signals a guest sends: pvpanic, and ACPI hardware-reduced sleep.

* ``PvPanic``: QEMU's ISA pvpanic device (ACPI ``QEMU0001``, one port).  A
  read tells the guest what we support; a write of PANICKED means the guest
  kernel panicked.  CRASH_LOADED (a kdump kernel took over) is only logged.
* ``SleepControl``: the FADT sleep control register of a hardware-reduced
  ACPI machine (one byte).  Linux powers off by writing SLP_TYP (bits 2-4)
  with SLP_EN (bit 5); SLP_TYP must match the ``\\_S5_`` package in the DSDT.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger(__name__)

PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
PVPANIC_CAPABILITIES = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED

SLP_EN = 1 << 5
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x7
#: SLP_TYP of S5 (soft off); the DSDT's \_S5_ package says the same.
S5_SLP_TYP = 5


class PvPanic:
    """One-port pvpanic: reads give capabilities, writes report events."""

    def __init__(self, on_panic: Callable[[], None]) -> None:
        self._on_panic = on_panic

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes([PVPANIC_CAPABILITIES]) + b"\0" * (len(data) - 1)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        value = data[0]
        if value & PVPANIC_PANICKED:
            self._on_panic()
        elif value & PVPANIC_CRASH_LOADED:
            log.warning("the guest reported a crash; its crash kernel is running")


class SleepControl:
    """The ACPI sleep control (offset 0) and status (offset 1) registers."""

    def __init__(self, on_poweroff: Callable[[], None]) -> None:
        self._on_poweroff = on_poweroff

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))  # no wake events to report

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset != 0:
            return  # status register: write-1-to-clear bits we never set
        value = data[0]
        if value & SLP_EN and (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLP_TYP:
            self._on_poweroff()
        elif value & SLP_EN:
            log.debug("guest asked for sleep type %d; only S5 (poweroff) is supported",
                      (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK)
