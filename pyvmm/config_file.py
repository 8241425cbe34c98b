"""Machine config files (TOML): every ``pyvmm run`` option, validated with locations.

```toml
kernel = "images/out/linux/bzImage"   # relative paths are relative to this file
initrd = "images/out/initramfs.cpio.gz"
append = "console=ttyS0 reboot=k"
memory = "512M"                        # or a number of MiB
cpus = 2
timeout = 60
cpu = "auto"
virtio_console = true
virtio_announce = "both"               # or "acpi", "cmdline"
acpi = true

[[drive]]
path = "disk.img"
readonly = false
cache = "writeback"
serial = "data0"
```

Errors name the file, the line and the key (``machine.toml:4: memory: '12X' is
not a size``).  tomllib reports no positions for values, so the line is found
by looking for the key in the text.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from pyvmm.config import (CACHE_MODES, CPU_POLICIES, DUMP_EVENTS, VIRTIO_ANNOUNCE,
                          DriveConfig, cpus_problem, memory_problem, parse_size,
                          timeout_problem)
from pyvmm.errors import ConfigError, PyvmmError
from pyvmm.inputfile import read_input

#: Larger than any machine file needs to be.
MAX_CONFIG_BYTES = 1 << 20

#: key -> the Python types its value may have.
SCHEMA: dict[str, tuple[type, ...]] = {
    "kernel": (str,), "initrd": (str,), "append": (str,), "memory": (str, int),
    "cpus": (int,), "timeout": (int, float), "cpu": (str,), "virtio_console": (bool,),
    "drive": (list,), "virtio_announce": (str,), "acpi": (bool,), "dump": (str,),
    "dump_on": (list,), "control": (str,), "emulation_assist": (str,),
}
DRIVE_SCHEMA: dict[str, tuple[type, ...]] = {
    "path": (str,), "readonly": (bool,), "cache": (str,), "serial": (str,),
}
_PATH_KEYS = ("kernel", "initrd", "dump", "control")


class _Locator:
    """Finds the line of a key in the file text, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def where(self, key: str, table: int | None = None) -> str:
        """``file:line`` of ``key``: top-level, or in the ``table``-th [[drive]]."""
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        start, seen = 0, -1
        if table is not None:
            for number, line in enumerate(self.lines):
                if line.strip().startswith("[[drive]]"):
                    seen += 1
                    if seen == table:
                        start = number + 1
                        break
        for number in range(start, len(self.lines)):
            line = self.lines[number]
            if line.lstrip().startswith("["):
                break  # the next table ends the one searched
            if pattern.match(line):
                return f"{self.path}:{number + 1}"
        return self.path

    def fail(self, key: str, message: str, table: int | None = None) -> ConfigError:
        return ConfigError(f"{self.where(key, table)}: {key}: {message}")


def _type_names(key: str, types: tuple[type, ...]) -> str:
    names = {str: "a string", int: "a number", float: "a number", bool: "true or false",
             list: "a list of [[drive]] tables" if key == "drive"
             else f"a list such as {list(DUMP_EVENTS[:2])}"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def load_config_file(path: str) -> dict[str, Any]:
    """Read and check ``path``; return option values keyed like ``pyvmm run``'s."""
    raw = read_input(path, "config file", ConfigError, MAX_CONFIG_BYTES)
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    where = _Locator(path, text)
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SCHEMA:
            raise where.fail(key, f"unknown key (known: {', '.join(sorted(SCHEMA))})")
        types = SCHEMA[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise where.fail(key, f"{value!r} should be {_type_names(key, types)}")
        values[key] = _convert(key, value, where, base)
    return values


def _convert(key: str, value: Any, where: _Locator, base: str) -> Any:
    if key == "dump_on":
        if not all(isinstance(v, str) and v in DUMP_EVENTS for v in value):
            raise where.fail(key, f"{value!r} (a list of: {', '.join(DUMP_EVENTS)})")
        return tuple(value)
    if key in _PATH_KEYS:
        return os.path.join(base, os.path.expanduser(value))
    if key == "memory":
        try:
            size = value << 20 if isinstance(value, int) else parse_size(value)
        except PyvmmError:
            raise where.fail(key, f"{value!r} is not a size (use e.g. 512M or 2G)") from None
        problem = memory_problem(size)
        if problem:
            raise where.fail(key, f"{value!r}: {problem}")
        return size
    problem = cpus_problem(value) if key == "cpus" else \
        timeout_problem(value) if key == "timeout" else None
    if problem:
        raise where.fail(key, f"{value}: {problem}")
    if key == "cpu" and value not in CPU_POLICIES:
        raise where.fail(key, f"{value!r} (choose one of {', '.join(CPU_POLICIES)})")
    if key == "virtio_announce" and value not in VIRTIO_ANNOUNCE:
        raise where.fail(key, f"{value!r} (choose one of {', '.join(VIRTIO_ANNOUNCE)})")
    if key == "drive":
        return tuple(_drive(item, index, where, base) for index, item in enumerate(value))
    return value


def _drive(item: Any, index: int, where: _Locator, base: str) -> DriveConfig:
    if not isinstance(item, dict):
        raise where.fail("drive", "each drive must be a [[drive]] table")
    for key, value in item.items():
        if key not in DRIVE_SCHEMA:
            raise where.fail(key, f"unknown drive key (known: {', '.join(DRIVE_SCHEMA)})",
                             table=index)
        if not isinstance(value, DRIVE_SCHEMA[key]):
            raise where.fail(key, f"{value!r} should be "
                             f"{_type_names(key, DRIVE_SCHEMA[key])}", table=index)
    if "path" not in item:
        raise ConfigError(f"{where.path}: drive {index + 1}: path is missing")
    cache = item.get("cache", "writeback")
    if cache not in CACHE_MODES:
        raise where.fail("cache", f"{cache!r} (use none or writeback)", table=index)
    serial = item.get("serial", "")
    if len(serial.encode()) > 20:
        raise where.fail("serial", "longer than 20 bytes", table=index)
    return DriveConfig(os.path.join(base, os.path.expanduser(item["path"])),
                       item.get("readonly", False), cache, serial)
