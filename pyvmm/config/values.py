"""The kinds of value a machine option takes: how each is read, checked and shown.

A value reaches pyvmm three ways: as text on the command line (``--memory
512M``), as a TOML value (``memory = 512`` or ``"512M"``) and as a Python
value (``Machine(memory=512 << 20)``).  A ``Kind`` turns each into the one
typed value ``MachineConfig`` holds, and says what is wrong with it in words
that don't name the place it came from (``too small; pyvmm needs at least
16M``): the caller adds ``--memory 1M:``, ``machine.toml:4: memory:`` or
``memory=1048576:``.  So each limit is stated once, whatever the source.

No I/O, and nothing heavier than ``re`` to import: ``pyvmm run`` imports this
at start-up.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, NamedTuple, Sequence

from pyvmm.errors import ConfigError

#: Smallest guest RAM we accept; a kernel needs more, and says so when loaded.
MIN_MEMORY = 16 << 20
#: Largest guest RAM we accept (guest-physical addresses stay below 1 TiB + 4 GiB;
#: whether the host can back it is found when RAM is reserved).
MAX_MEMORY = 1 << 40
#: Longest --timeout: a year (longer is a mistake, and time.monotonic() + it must stay exact).
MAX_TIMEOUT = 366 * 24 * 3600.0

#: A size; compiled on first use (re caches it), not at every pyvmm start.
_SIZE_PATTERN = r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$"
_SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
ON, OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


class BadValue(ConfigError):
    """A value that can't be an option's: the message says why, not where from
    (the caller adds that; one that escapes is still a one-line error)."""


def size_name(size: int) -> str:
    """``size`` as a user would write it: 512M, 2G, or bytes."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size > 0 and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """Bytes in a size such as ``512M``, ``2G``, ``1GiB`` or ``768`` (MiB, as QEMU's -m)."""
    match = re.match(_SIZE_PATTERN, text, re.IGNORECASE)
    if not match:
        raise BadValue(f"{text!r} is not a size (use e.g. 512M or 2G)")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number * _SIZE_UNITS[unit]


def memory_problem(size: int) -> str | None:
    if size < MIN_MEMORY:
        return f"too small; pyvmm needs at least {MIN_MEMORY >> 20}M"
    if size % 4096:
        return "must be a multiple of 4 KiB"
    if size > MAX_MEMORY:
        return f"more than pyvmm gives a guest ({size_name(MAX_MEMORY)})"
    return None


def timeout_problem(seconds: float) -> str | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return "must be a positive number of seconds"
    if seconds > MAX_TIMEOUT:
        return f"longer than a year ({MAX_TIMEOUT:g} s)"
    return None


class Kind:
    """Strings, the default kind: text in, text out."""

    #: The TOML types a value may have, and how a message names them.
    toml_types: tuple[type, ...] = (str,)
    toml_name = "a string"

    def from_text(self, text: str) -> Any:
        """The value of command-line (or TOML, or keyword) text."""
        return text

    def from_texts(self, texts: Sequence[str]) -> Any:
        """The value of a repeatable option given once per text (``--dump-on a --dump-on b``)."""
        return tuple(self.from_text(text) for text in texts)

    def from_value(self, value: Any) -> Any:
        """The value of a Python value: text is read as the command line reads it."""
        if isinstance(value, str):
            return self.from_text(value)
        raise BadValue(f"{value!r} should be {self.toml_name}")

    def from_toml(self, value: Any, base: str) -> Any:
        """The value of a TOML value in a file in directory ``base``."""
        return self.from_value(value)

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the right type, or None."""
        return None

    def show(self, value: Any) -> str:
        """``value`` as the command line would take it."""
        return "-" if value is None else str(value)


class PathKind(Kind):
    """A host file; in a config file, relative to the file's directory."""

    def from_value(self, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return super().from_value(value)

    def from_toml(self, value: Any, base: str) -> Any:
        return os.path.join(base, os.path.expanduser(self.from_value(value)))


class DirectoryKind(PathKind):
    """A host directory (the command line refuses a file there)."""


class SizeKind(Kind):
    """Bytes, given as ``512M`` / ``2G`` / a number of MiB; a Python int is bytes."""

    toml_types = (str, int)
    toml_name = "a string or a number"

    def __init__(self, problem=memory_problem) -> None:
        self._problem = problem

    def from_text(self, text: str) -> int:
        return parse_size(text)

    def from_value(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return super().from_value(value)

    def from_toml(self, value: Any, base: str) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return value << 20  # a bare number is MiB, as on the command line
        return self.from_text(value)

    def problem(self, value: Any) -> str | None:
        return self._problem(value)

    def show(self, value: Any) -> str:
        return size_name(value)


class CountKind(Kind):
    """A whole number between ``low`` and ``high``."""

    toml_types = (int,)
    toml_name = "a number"

    def __init__(self, low: int, high: int, too_low: str, too_high: str) -> None:
        self.low, self.high, self.too_low, self.too_high = low, high, too_low, too_high

    def from_text(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise BadValue(f"{text!r} is not a whole number") from None

    def from_value(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return super().from_value(value)

    def problem(self, value: Any) -> str | None:
        if value < self.low:
            return self.too_low
        if value > self.high:
            return self.too_high
        return None


class SecondsKind(Kind):
    """A number of seconds, or None for no limit."""

    toml_types = (int, float)
    toml_name = "a number"

    def from_text(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise BadValue(f"{text!r} is not a number of seconds") from None

    def from_value(self, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return super().from_value(value)

    def problem(self, value: Any) -> str | None:
        return timeout_problem(value)

    def show(self, value: Any) -> str:
        return "none" if value is None else f"{value:g}"


class ChoiceKind(Kind):
    """One of a few words."""

    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = tuple(choices)

    def problem(self, value: Any) -> str | None:
        if value not in self.choices:
            return f"choose one of {', '.join(self.choices)}"
        return None


class SwitchKind(Kind):
    """On or off: true/false in TOML and Python, on/off (yes/no, 1/0) in text."""

    toml_types = (bool,)
    toml_name = "true or false"

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word not in ON + OFF:
            raise BadValue(f"{text!r} (use on or off)")
        return word in ON

    def from_value(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        return super().from_value(value)

    def show(self, value: Any) -> str:
        return "on" if value else "off"


class TextKind(Kind):
    """Text of at most ``max_bytes`` UTF-8 bytes (at least ``min_bytes``), none of ``forbidden``."""

    def __init__(self, max_bytes: int, min_bytes: int = 0, forbidden: str = "") -> None:
        self.max_bytes, self.min_bytes, self.forbidden = max_bytes, min_bytes, forbidden

    def problem(self, value: Any) -> str | None:
        bad = [char for char in self.forbidden if char in value]
        if bad:
            return f"holds {bad[0]!r}"
        if len(value.encode()) > self.max_bytes:
            return f"longer than {self.max_bytes} bytes"
        if len(value.encode()) < self.min_bytes:
            return "empty" if self.min_bytes == 1 else f"shorter than {self.min_bytes} bytes"
        return None


class EventsKind(ChoiceKind):
    """A list of words from ``choices`` (repeatable on the command line)."""

    toml_types = (list,)

    def __init__(self, choices: Sequence[str]) -> None:
        super().__init__(choices)
        self.toml_name = f"a list such as {list(self.choices[:2])}"

    def from_text(self, text: str) -> tuple[str, ...]:
        return (text,)

    def from_texts(self, texts: Sequence[str]) -> tuple[str, ...]:
        return tuple(texts)

    def from_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        return super().from_value(value)

    def problem(self, value: Any) -> str | None:
        bad = [event for event in value if event not in self.choices]
        if bad:
            return f"{bad[0]!r}: choose from {', '.join(self.choices)}"
        return None

    def show(self, value: Any) -> str:
        return ", ".join(value) or "-"


#: ``--gdb``'s value: ``[HOST:]PORT`` (TCP, 127.0.0.1 unless a host is given) or ``unix:PATH``.
GDB_DEFAULT_HOST = "127.0.0.1"
#: Longest unix socket path (sun_path is 108 bytes, with its terminating NUL).
MAX_UNIX_SOCKET_PATH = 107


class GdbAddress(NamedTuple):
    """Where to listen: ``unix`` (``path``) or TCP (``host``, ``port``)."""

    unix: bool
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.unix else f"{self.host}:{self.port}"


def parse_gdb_address(text: str) -> GdbAddress:
    """``[HOST:]PORT`` or ``unix:PATH``; ValueError with a one-line reason."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("unix: needs a PATH")
        if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH:
            raise ValueError(f"a unix socket path is at most {MAX_UNIX_SOCKET_PATH} bytes")
        return GdbAddress(True, path=path)
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or GDB_DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a TCP port (1-65535); "
                         "use [HOST:]PORT or unix:PATH")
    return GdbAddress(False, host=host, port=int(port_text))


class GdbAddressKind(Kind):
    """``--gdb``'s ``[HOST:]PORT`` or ``unix:PATH``, kept as given (``parse_gdb_address``)."""

    def problem(self, value: Any) -> str | None:
        try:
            parse_gdb_address(value)
        except ValueError as exc:
            return str(exc)
        return None
