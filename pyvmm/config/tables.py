"""The ``[[drive]]`` and ``[[share]]`` tables of a machine, and their command-line specs.

Each key of a table is a field of ``DriveConfig`` / ``ShareConfig`` with its
``Kind`` in the metadata: config files, ``config_from_options(drives=[{...}])``
and ``--drive path=a.img,readonly=on`` all take the same keys, checked the
same way.  No I/O.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pyvmm.config.values import (OFF, ON, BadValue, ChoiceKind, Kind, PathKind, SwitchKind,
                                 TextKind)
from pyvmm.errors import ConfigError
from pyvmm.host.image_format import FORMATS
from pyvmm.limits import FS_TAG_BYTES, FS_TAG_FORBIDDEN

#: Values of ``cache=`` in --drive: page-cache writeback, or O_DIRECT.
CACHE_MODES = ("writeback", "none")
#: Values of ``format=``: auto (the image's magic says; see pyvmm.host.image_format).
DRIVE_FORMATS = ("auto",) + FORMATS
#: Who serves a drive: auto (raw in pyvmm, anything else or snapshot=on through
#: qemu-storage-daemon), pyvmm (in-process, raw only) or qsd (the daemon).
DRIVE_BACKENDS = ("auto", "pyvmm", "qsd")


def table_key(help: str, kind: Kind | None = None) -> dict:
    """Field metadata declaring a key of a ``[[table]]`` (and of its command-line spec)."""
    return {"key": {"help": help, "kind": kind or Kind()}}


@dataclass(frozen=True)
class DriveConfig:
    """One --drive / [[drive]]: an image file and how to open it."""

    path: str = field(metadata=table_key("the image file", PathKind()))
    readonly: bool = field(default=False, metadata=table_key(
        "open it read-only: the guest's writes fail", SwitchKind()))
    cache: str = field(default="writeback", metadata=table_key(
        "writeback (page cache) or none (O_DIRECT)", ChoiceKind(CACHE_MODES)))
    serial: str = field(default="", metadata=table_key(
        "what GET_ID answers (at most 20 bytes)", TextKind(20)))
    format: str = field(default="auto", metadata=table_key(
        "the image's format: auto (by its magic; no magic is raw), raw, qcow2, ...",
        ChoiceKind(DRIVE_FORMATS)))
    backend: str = field(default="auto", metadata=table_key(
        "auto, pyvmm (in-process, raw only) or qsd (qemu-storage-daemon)",
        ChoiceKind(DRIVE_BACKENDS)))
    snapshot: bool = field(default=False, metadata=table_key(
        "the guest's writes go to a temporary qcow2 overlay: the image never changes",
        SwitchKind()))
    overlay: str = field(default="", metadata=table_key(
        "with snapshot=on, keep the overlay in this new file", PathKind()))


@dataclass(frozen=True)
class ShareConfig:
    """One --share / [[share]]: a host directory the guest mounts with ``mount -t virtiofs TAG``."""

    path: str = field(metadata=table_key("the host directory", PathKind()))
    tag: str = field(metadata=table_key("the virtio-fs tag (default share0, share1, ...)",
                                   TextKind(FS_TAG_BYTES, 1, FS_TAG_FORBIDDEN)))
    readonly: bool = field(default=False, metadata=table_key("the guest can't write", SwitchKind()))


def table_keys(table: type) -> dict[str, Kind]:
    """The keys of a ``[[drive]]``/``[[share]]`` table and their kinds, in order."""
    return {f.name: f.metadata["key"]["kind"] for f in dataclasses.fields(table)}


def table_defaults(table: type, index: int) -> dict[str, Any]:
    """Values of the keys a table's ``index``-th entry may leave out."""
    return {"tag": f"share{index}"} if table is ShareConfig else {}


class TablesKind(Kind):
    """A list of ``[[drive]]``-like tables: on the command line, one spec per flag."""

    toml_types = (list,)

    def __init__(self, table: type, parse_spec: Callable[[str, int], Any]) -> None:
        self.table, self.parse_spec = table, parse_spec
        self.toml_name = "a list of tables"

    def from_text(self, text: str) -> tuple:
        return self.from_texts([text])

    def from_texts(self, specs: Sequence[str]) -> tuple:
        return tuple(self.parse_spec(spec, index) for index, spec in enumerate(specs))

    def from_value(self, value: Any) -> Any:
        if isinstance(value, (str, os.PathLike, dict, self.table)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BadValue(f"{value!r} should be a list of {self.table.__name__}, "
                           "dicts or specs")
        return tuple(self.entry(item, index) for index, item in enumerate(value))

    def entry(self, item: Any, index: int) -> Any:
        """One table from a dataclass, a dict of key values, a command-line spec, or a path."""
        if isinstance(item, self.table):
            return item
        if isinstance(item, os.PathLike):  # just the file: no spec parsing, commas and all
            item = {"path": os.fspath(item)}
        if isinstance(item, str):
            return self.parse_spec(item, index)
        if not isinstance(item, dict):
            raise BadValue(f"entry {index + 1}: {item!r} is not a table")
        kinds, values = table_keys(self.table), table_defaults(self.table, index)
        for key, raw in item.items():
            if key not in kinds:
                raise BadValue(f"entry {index + 1}: unknown key {key!r} ({', '.join(kinds)})")
            try:
                values[key] = kinds[key].from_value(raw)
            except BadValue as exc:
                raise BadValue(f"entry {index + 1}: {key}: {exc}") from None
            problem = kinds[key].problem(values[key])
            if problem:
                raise BadValue(f"entry {index + 1}: {key}={raw!r}: {problem}")
        return self.build(values, index)

    def build(self, values: dict[str, Any], index: int) -> Any:
        """The table from checked key values; BadValue if a required key is missing."""
        values = {**table_defaults(self.table, index), **values}
        for f in dataclasses.fields(self.table):
            if f.name not in values and f.default is dataclasses.MISSING:
                raise BadValue(f"entry {index + 1}: {f.name} is missing")
        return self.table(**values)

    def show(self, value: Any) -> str:
        """The entries as command-line specs (``path=a.img,readonly=off,cache=none``)."""
        kinds = table_keys(self.table)
        return "; ".join(",".join(f"{key}={escape_option(kinds[key].show(v))}"
                                  for key, v in dataclasses.asdict(entry).items()
                                  if v not in ("", ()))
                         for entry in value) or "-"


def split_options(text: str) -> list[str]:
    """``text`` cut at its commas, where ``,,`` is a comma of the value (QEMU's escape)."""
    parts = [""]
    position = 0
    while position < len(text):
        char = text[position]
        if char == "," and text.startswith(",,", position):
            parts[-1] += ","
            position += 2
            continue
        if char == ",":
            parts.append("")
        else:
            parts[-1] += char
        position += 1
    return parts


def escape_option(value: str) -> str:
    """``value`` as ``split_options`` reads it back: its commas doubled."""
    return value.replace(",", ",,")


#: Other names --drive takes for a key (QEMU's -drive says file=).
_DRIVE_ALIASES = {"file": "path"}


def parse_drive(text: str, index: int = 0) -> DriveConfig:
    """``path=disk.img[,readonly=on][,cache=none|writeback][,serial=ID][,format=F]
    [,backend=B][,snapshot=on][,overlay=FILE]`` (QEMU-style).

    A bare ``disk.img`` is taken as the path; ``,,`` is a comma in a value.
    """
    fields: dict[str, str] = {}
    for position, part in enumerate(split_options(text)):
        key, sep, value = part.partition("=")
        if not sep and position == 0:
            key, value = "path", part
        elif not sep:
            raise ConfigError(f"--drive {text!r}: {part!r} is not key=value (a comma in "
                              "a file name is written ,,)")
        given = key.strip()
        key = _DRIVE_ALIASES.get(given, given)
        if key in fields:
            also = "" if given == key and key not in _DRIVE_ALIASES.values() else \
                f" ({', '.join(k + '=' for k, v in _DRIVE_ALIASES.items() if v == key)} "\
                f"is another name for {key}=)"
            raise ConfigError(f"--drive {text!r}: {key} given twice{also}")
        fields[key] = value.strip()
    kinds = table_keys(DriveConfig)
    unknown = set(fields) - set(kinds)
    if unknown:
        raise ConfigError(f"--drive {text!r}: unknown option {sorted(unknown)[0]!r} "
                          f"({', '.join(kinds)})")
    if not fields.get("path"):
        raise ConfigError(f"--drive {text!r}: path= is missing")
    values: dict[str, Any] = {}
    for key, raw in fields.items():
        try:
            values[key] = kinds[key].from_text(raw)
        except BadValue:
            problem: str | None = "use on or off"
        else:
            problem = kinds[key].problem(values[key])
        if problem:
            raise ConfigError(f"--drive {text!r}: {key}={raw} ({problem})")
    return DriveConfig(**values)


def parse_share(text: str, index: int = 0) -> ShareConfig:
    """``HOST_DIR[,tag=NAME][,ro]``; the tag defaults to ``share0``, ``share1``, ...

    ``,,`` is a comma in the directory's name (or the tag).
    """
    path, *options = split_options(text)
    if not path:
        raise ConfigError(f"--share {text!r}: the host directory is missing")
    tag, readonly = f"share{index}", False
    for option in options:
        key, sep, value = option.partition("=")
        if key == "tag" and sep and value:
            tag = value
        elif key in ("ro", "readonly") and (not sep or value in ON + OFF):
            readonly = not sep or value in ON
        elif key == "rw" and not sep:
            readonly = False
        else:
            raise ConfigError(f"--share {text!r}: unknown option {option!r} (tag=NAME, ro; "
                              "a comma in a directory's name is written ,,)")
    problem = table_keys(ShareConfig)["tag"].problem(tag)
    if problem:
        raise ConfigError(f"--share {text!r}: tag {tag!r}: {problem}")
    return ShareConfig(path, tag, readonly)
