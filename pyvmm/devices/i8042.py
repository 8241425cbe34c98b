"""An i8042 keyboard controller, enough for Linux's probe and for reset.

Covers ports 0x60 (data, offset 0) and 0x64 (status/command, offset 4).
Command 0xFE pulses the CPU reset line, which is how ``reboot=k`` restarts a
PC; pyvmm turns it into a clean stop.  No keyboard is emulated.
"""

from __future__ import annotations

import threading
from typing import Callable

DATA_OFFSET = 0
COMMAND_OFFSET = 4

# Status register bits.
STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM_FLAG = 0x04
STATUS_COMMAND = 0x08  # last write was to the command port

# Controller commands.
CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_SELF_TEST = 0xAA
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_RESET = 0xFE

SELF_TEST_PASSED = 0x55
#: Output-port bit 0 is the CPU reset line (active low).
OUTPUT_PORT_RESET_LINE = 0x01
#: Controller configuration at power-on: keyboard interrupt on, system flag set.
DEFAULT_CTR = 0x45


class I8042:
    """The controller's registers; ``reset`` is called when the guest resets the CPU."""

    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self._lock = threading.Lock()
        self._ctr = DEFAULT_CTR
        self._output: int | None = None
        self._expect: int | None = None  # command awaiting a data byte
        self._status = STATUS_SYSTEM_FLAG

    def to_state(self) -> dict:
        with self._lock:
            return {"ctr": self._ctr, "output": self._output, "expect": self._expect,
                    "status": self._status}

    def from_state(self, state: dict) -> None:
        with self._lock:
            self._ctr, self._output = state["ctr"], state["output"]
            self._expect, self._status = state["expect"], state["status"]

    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            if offset == COMMAND_OFFSET:
                value = self._status | (STATUS_OUTPUT_FULL if self._output is not None else 0)
            elif offset == DATA_OFFSET:
                value = self._output if self._output is not None else 0
                self._output = None
            else:
                value = 0xFF
        data[:] = bytes([value]) + b"\xff" * (len(data) - 1)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        value = data[0]
        reset = False
        with self._lock:
            if offset == COMMAND_OFFSET:
                self._status |= STATUS_COMMAND
                reset = self._command(value)
            elif offset == DATA_OFFSET:
                self._status &= ~STATUS_COMMAND
                if self._expect == CMD_WRITE_CTR:
                    self._ctr = value
                elif self._expect == CMD_WRITE_OUTPUT_PORT:
                    reset = not value & OUTPUT_PORT_RESET_LINE
                self._expect = None
        if reset:
            self._reset()

    def _command(self, command: int) -> bool:
        """Run a controller command; True when it resets the CPU."""
        self._expect = None
        if command == CMD_READ_CTR:
            self._output = self._ctr
        elif command in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
            self._expect = command
        elif command == CMD_SELF_TEST:
            self._output = SELF_TEST_PASSED
        elif command == CMD_PULSE_RESET:
            return True
        return False
