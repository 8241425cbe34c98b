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

[[share]]
path = "src"
tag = "src"                            # default share0, share1, ...
readonly = true
```

The keys are the ``toml`` names of ``pyvmm.config.machine.machine_options()``, and
of the fields of ``DriveConfig`` / ``ShareConfig`` in their tables, so a new
option is a new key without a change here.  Errors name the file, the line
and the key (``machine.toml:4: memory: '12X' is not a size``).  tomllib
reports no positions, so the line is found by looking for the key (in its
table) in the text.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from pyvmm.config.machine import Option, check_values, machine_options
from pyvmm.config.tables import TablesKind, table_keys
from pyvmm.config.values import BadValue, Kind
from pyvmm.errors import ConfigError
from pyvmm.host.inputfile import read_input

#: Larger than any machine file needs to be.
MAX_CONFIG_BYTES = 1 << 20
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"'-]+)\s*\]\]?\s*(#.*)?$")


class _Locator:
    """Finds the line of a key in the file text, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def where(self, key: str | None, table: str | None = None, index: int = 0) -> str:
        """``file:line`` of ``key``: top-level, or in the ``index``-th ``[[table]]``.

        An entry written inline (``drive = [{ path = "a" }]``) is found at its
        array's line; a table's own problem (``key=None``) at its header.
        """
        start = 0
        if table is not None:
            headers = [number for number, line in enumerate(self.lines)
                       if (match := _HEADER.match(line)) and match.group(1) == table]
            if index >= len(headers):
                return self.where(table)
            if key is None:
                return f"{self.path}:{headers[index] + 1}"
            start = headers[index] + 1
        assert key is not None
        pattern = re.compile(rf"^\s*([\"']?){re.escape(key)}\1\s*=")
        for number in range(start, len(self.lines)):
            if _HEADER.match(self.lines[number]):
                break  # the next table ends the one searched
            if pattern.match(self.lines[number]):
                return f"{self.path}:{number + 1}"
        if table is not None:
            return f"{self.path}:{start}"
        for number, line in enumerate(self.lines):  # a [key] table where a value belongs
            if (match := _HEADER.match(line)) and match.group(1) == key:
                return f"{self.path}:{number + 1}"
        return self.path

    def fail(self, key: str, message: str, table: str | None = None,
             index: int = 0) -> ConfigError:
        return ConfigError(f"{self.where(key, table, index)}: {key}: {message}")


class ConfigFile:
    """One machine file's option values (keyed by ``MachineConfig`` field), and
    where each came from, to word errors about them (an ``Origin``)."""

    def __init__(self, path: str) -> None:
        raw = read_input(path, "config file", ConfigError, MAX_CONFIG_BYTES)
        text = raw.decode("utf-8", errors="replace")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        self.path = path
        self._where = _Locator(path, text)
        self._base = os.path.dirname(os.path.abspath(path))
        by_key = {option.toml: option for option in machine_options()}
        self.values: dict[str, Any] = {}
        for key, value in data.items():
            option = by_key.get(key)
            if option is None:
                raise self._where.fail(key, f"unknown key (known: {', '.join(by_key)})")
            if isinstance(option.kind, TablesKind):
                self.values[option.field] = self._tables(option, value)
            else:
                self.values[option.field] = self._value(option.kind, key, value)
        check_values(self.values, self, together=False)  # the command line may add to them

    def _value(self, kind: Kind, key: str, value: Any, table: str | None = None,
               index: int = 0) -> Any:
        """A checked value of ``key`` (in the ``index``-th ``[[table]]``)."""
        types = kind.toml_types
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise self._where.fail(key, f"{value!r} should be {kind.toml_name}", table, index)
        try:
            converted = kind.from_toml(value, self._base)
        except BadValue as exc:
            raise self._where.fail(key, str(exc), table, index) from None
        problem = kind.problem(converted)
        if problem:
            raise self._where.fail(key, f"{value!r}: {problem}", table, index)
        return converted

    def _tables(self, option: Option, value: Any) -> tuple:
        assert isinstance(option.kind, TablesKind)
        key = option.toml
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self._where.fail(key, f"{value!r} should be a list of [[{key}]] tables")
        kinds = table_keys(option.kind.table)
        entries = []
        for index, item in enumerate(value):
            values = {}
            for name, raw in item.items():
                if name not in kinds:
                    raise self._where.fail(name, f"unknown {key} key (known: "
                                           f"{', '.join(kinds)})", key, index)
                values[name] = self._value(kinds[name], name, raw, key, index)
            try:
                entries.append(option.kind.build(values, index))
            except BadValue as exc:
                message = str(exc).replace("entry ", f"{key} ", 1)
                raise ConfigError(f"{self._where.where(None, key, index)}: {message}") \
                    from None
        return tuple(entries)

    # An Origin (pyvmm.config.machine): errors about this file's values.

    def error(self, option: Option, message: str, value: Any = None) -> ConfigError:
        if isinstance(option.kind, TablesKind):  # at its first [[table]]
            where = self._where.where(None, option.toml, 0)
            return ConfigError(f"{where}: {option.toml}: {message}")
        return self._where.fail(option.toml, message if value is None else
                                f"{value!r}: {message}")

    def needs(self, option: Option, other: Option, why: str) -> ConfigError:
        return self._where.fail(option.toml, f"needs {other.toml} ({why})")


def load_config_file(path: str) -> dict[str, Any]:
    """Read and check ``path``; return its option values keyed by MachineConfig field."""
    return ConfigFile(path).values
