"""The machine's configuration, and the one place its options are declared.

Each option of a machine is a field of ``MachineConfig`` whose metadata says
everything else about it: its keyword (``Machine(memory=...)``), its TOML key,
its command-line flags, its help and the ``Kind`` of value it takes (how it is
read, checked and shown).  ``pyvmm run``'s click options (``cli_options``),
config files (``config_file``), ``pyvmm config show`` (``config_view``) and
``config_from_options`` are all made from ``machine_options()``, so an option
added here appears in all four.  No I/O here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from pyvmm.arch.x86_64.cpuid import MAX_CPUS
from pyvmm.config_values import (MAX_MEMORY, MAX_TIMEOUT, MIN_MEMORY, ON, OFF, BadValue,
                                 ChoiceKind, CountKind, EventsKind, Kind, PathKind,
                                 SecondsKind, SizeKind, SwitchKind, TextKind, memory_problem,
                                 parse_size, size_name, timeout_problem)
from pyvmm.errors import ConfigError

__all__ = ["MachineConfig", "DriveConfig", "ShareConfig", "Option", "machine_options",
           "config_from_options", "check_values", "parse_drive", "parse_share", "parse_size",
           "size_name", "memory_problem", "timeout_problem", "cpus_problem", "MIN_MEMORY",
           "MAX_MEMORY", "MAX_TIMEOUT", "BadValue", "ConfigError"]

#: The guest command line used when --append is not given.
DEFAULT_CMDLINE = "console=ttyS0 reboot=k"
#: CPU feature policies: see pyvmm.arch.x86_64.cpuid.
CPU_POLICIES = ("auto", "host", "compat")
#: When a dump is written: guest panic (pvpanic, triple fault, KVM failure), any
#: exit, SIGUSR1 (live: the guest pauses, is dumped, resumes), --timeout.
DUMP_EVENTS = ("panic", "exit", "signal", "timeout")
DEFAULT_DUMP_EVENTS = ("panic", "timeout")
#: Ways of telling the guest about virtio-mmio devices.
VIRTIO_ANNOUNCE = ("both", "acpi", "cmdline")
#: Values of ``cache=`` in --drive: page-cache writeback, or O_DIRECT.
CACHE_MODES = ("writeback", "none")
EMULATION_ASSIST = ("auto", "on", "off")


@dataclass(frozen=True)
class Option:
    """One machine option, as every front end sees it."""

    #: The MachineConfig attribute (also click's parameter name).
    field: str
    #: The keyword argument of ``config_from_options`` / ``Machine``.
    name: str
    #: The key in a config file (a ``[[table]]`` for lists of tables).
    toml: str
    #: Command-line flags, the long one first; ``--x/--no-x`` for a switch.
    flags: tuple[str, ...]
    help: str
    kind: Kind
    default: Any = None
    metavar: str | None = None
    #: Repeatable on the command line (each flag adds one).
    multiple: bool = False


def _option(*flags: str, help: str, kind: Kind | None = None, name: str = "",
            toml: str = "", metavar: str | None = None, multiple: bool = False) -> dict:
    """Field metadata declaring an option; the field gives its attribute and default."""
    return {"option": dict(flags=flags, help=help, kind=kind or Kind(), name=name, toml=toml,
                           metavar=metavar, multiple=multiple)}


def _key(help: str, kind: Kind | None = None) -> dict:
    """Field metadata declaring a key of a ``[[table]]`` (and of its command-line spec)."""
    return {"key": {"help": help, "kind": kind or Kind()}}


@dataclass(frozen=True)
class DriveConfig:
    """One --drive / [[drive]]: a raw image file and how to open it."""

    path: str = field(metadata=_key("the image file", PathKind()))
    readonly: bool = field(default=False, metadata=_key(
        "open it read-only: the guest's writes fail", SwitchKind()))
    cache: str = field(default="writeback", metadata=_key(
        "writeback (page cache) or none (O_DIRECT)", ChoiceKind(CACHE_MODES)))
    serial: str = field(default="", metadata=_key(
        "what GET_ID answers (at most 20 bytes)", TextKind(20)))


@dataclass(frozen=True)
class ShareConfig:
    """One --share / [[share]]: a host directory the guest mounts with ``mount -t virtiofs TAG``."""

    path: str = field(metadata=_key("the host directory", PathKind()))
    tag: str = field(metadata=_key("the virtio-fs tag (default share0, share1, ...)",
                                   TextKind(36, min_bytes=1)))
    readonly: bool = field(default=False, metadata=_key("the guest can't write", SwitchKind()))


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
        self.toml_name = f"a list of tables"

    def from_texts(self, specs: tuple[str, ...]) -> tuple:
        return tuple(self.parse_spec(spec, index) for index, spec in enumerate(specs))

    def from_value(self, value: Any) -> Any:
        if isinstance(value, (str, dict, self.table)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise BadValue(f"{value!r} should be a list of {self.table.__name__}, "
                           "dicts or specs")
        return tuple(self.entry(item, index) for index, item in enumerate(value))

    def entry(self, item: Any, index: int) -> Any:
        """One table from a dataclass, a dict of key values, or a command-line spec."""
        if isinstance(item, self.table):
            return item
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
        return "; ".join(",".join(f"{key}={kinds[key].show(v)}"
                                  for key, v in dataclasses.asdict(entry).items() if v != "")
                         for entry in value) or "-"


#: Other names --drive takes for a key (QEMU's -drive says file=).
_DRIVE_ALIASES = {"file": "path"}


def parse_drive(text: str, index: int = 0) -> DriveConfig:
    """``path=disk.img[,readonly=on][,cache=none|writeback][,serial=ID]`` (QEMU-style).

    A bare ``disk.img`` is taken as the path.
    """
    fields: dict[str, str] = {}
    for position, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if not sep and position == 0:
            key, value = "path", part
        elif not sep:
            raise ConfigError(f"--drive {text!r}: {part!r} is not key=value")
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
    """``HOST_DIR[,tag=NAME][,ro]``; the tag defaults to ``share0``, ``share1``, ..."""
    path, *options = text.split(",")
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
            raise ConfigError(f"--share {text!r}: unknown option {option!r} (tag=NAME, ro)")
    if table_keys(ShareConfig)["tag"].problem(tag):
        raise ConfigError(f"--share {text!r}: the tag must be 1 to 36 bytes")
    return ShareConfig(path, tag, readonly)


def cpus_problem(count: int) -> str | None:
    return _CPUS.problem(count)


_CPUS = CountKind(1, MAX_CPUS, "a machine needs at least one vCPU",
                  f"the platform describes at most {MAX_CPUS} vCPUs (8-bit xAPIC IDs)")


@dataclass(frozen=True)
class MachineConfig:
    """Everything ``pyvmm run`` needs to build and run one VM."""

    kernel: str = field(metadata=_option(
        "--kernel", "-k", kind=PathKind(),
        help="Kernel to boot: a bzImage, or an ELF vmlinux with a PVH entry."))
    initrd: str | None = field(default=None, metadata=_option(
        "--initrd", "-i", kind=PathKind(),
        help="Initial ramdisk (e.g. a cpio archive) handed to the kernel."))
    cmdline: str = field(default=DEFAULT_CMDLINE, metadata=_option(
        "--append", "-a", name="append", metavar="CMDLINE",
        help=f"Kernel command line (default: {DEFAULT_CMDLINE!r})."))
    memory: int = field(default=512 << 20, metadata=_option(
        "--memory", "-m", kind=SizeKind(), metavar="SIZE",
        help="Guest RAM, e.g. 512M or 2G (a bare number is MiB; default 512M)."))
    cpus: int = field(default=1, metadata=_option(
        "--cpus", "-c", kind=_CPUS, help="Number of vCPUs (default 1)."))
    timeout: float | None = field(default=None, metadata=_option(
        "--timeout", "-t", kind=SecondsKind(), metavar="SECONDS",
        help="Stop the guest after SECONDS and exit 124."))
    cpu_policy: str = field(default="auto", metadata=_option(
        "--cpu", name="cpu", kind=ChoiceKind(CPU_POLICIES),
        help="CPU features shown to the guest: host (all KVM supports), compat "
             "(hide what software emulation can't run), auto (default: compat "
             "on a kvm_pvm host, else host)."))
    drives: tuple[DriveConfig, ...] = field(default=(), metadata=_option(
        "--drive", "-d", toml="drive", metavar="SPEC", multiple=True,
        kind=TablesKind(DriveConfig, parse_drive),
        help="A virtio-block disk: path=IMG[,readonly=on][,cache=none|writeback]"
             "[,serial=ID].  Repeat for vda, vdb, ..."))
    #: Host directories given to the guest over virtio-fs (vhost-user, virtiofsd).
    shares: tuple[ShareConfig, ...] = field(default=(), metadata=_option(
        "--share", toml="share", metavar="DIR[,tag=NAME][,ro]", multiple=True,
        kind=TablesKind(ShareConfig, parse_share),
        help="Give the guest a host directory over virtio-fs (a virtiofsd per "
             "share): mount -t virtiofs NAME /mnt (default tags share0, "
             "share1, ...).  Repeatable."))
    #: A multiport virtio console carrying the command mode's stdin/stdout/stderr
    #: (set by command mode, not an option).
    stdio_ports: bool = False
    virtio_console: bool = field(default=True, metadata=_option(
        "--virtio-console/--no-virtio-console", kind=SwitchKind(),
        help="Give the guest a virtio console, hvc0 (default on); with "
             "console=hvc0 on the command line it takes the terminal."))
    virtio_announce: str = field(default="both", metadata=_option(
        "--virtio-announce", kind=ChoiceKind(VIRTIO_ANNOUNCE),
        help="How the guest learns of virtio devices: the kernel command line "
             "(virtio_mmio.device=, needs VIRTIO_MMIO_CMDLINE_DEVICES), the ACPI "
             "DSDT, or both (default)."))
    acpi: bool = field(default=True, metadata=_option(
        "--acpi/--no-acpi", kind=SwitchKind(),
        help="Give the guest ACPI tables (default on): CPUs, devices, poweroff."))
    dump: str | None = field(default=None, metadata=_option(
        "--dump", kind=PathKind(),
        help="Write an ELF core of the guest (as QEMU's dump-guest-memory) "
             "here; read it with 'pyvmm inspect'."))
    dump_on: tuple[str, ...] = field(default=(), metadata=_option(
        "--dump-on", kind=EventsKind(DUMP_EVENTS), multiple=True,
        help="When to dump (repeatable; default panic and timeout): guest "
             "panic / triple fault / KVM failure, any exit, SIGUSR1 (live), "
             "--timeout."))
    control: str | None = field(default=None, metadata=_option(
        "--control", kind=PathKind(),
        help="Listen on this unix socket for live dumps "
             "('pyvmm inspect summary SOCKET' reads the running guest)."))
    emulation_assist: str = field(default="auto", metadata=_option(
        "--emulation-assist", kind=ChoiceKind(EMULATION_ASSIST),
        help="After KVM's software emulator fails on int3 or fwait, carry "
             "them out in pyvmm (inject #BP / skip) and go on (default auto: "
             "on where /dev/kvm is kvm_pvm)."))

    def __post_init__(self) -> None:
        check_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                     KEYWORDS)
        if self.virtio_announce in ("acpi", "both") and not self.acpi:
            object.__setattr__(self, "virtio_announce", "cmdline")
        if self.dump and not self.dump_on:
            object.__setattr__(self, "dump_on", DEFAULT_DUMP_EVENTS)


@functools.cache
def machine_options() -> tuple[Option, ...]:
    """Every option of a machine, in ``pyvmm run --help`` order."""
    options = []
    for f in dataclasses.fields(MachineConfig):
        if "option" in f.metadata:
            spec = dict(f.metadata["option"])
            spec["name"] = spec["name"] or f.name
            spec["toml"] = spec["toml"] or spec["name"]
            default = None if f.default is dataclasses.MISSING else f.default
            options.append(Option(field=f.name, default=default, **spec))
    return tuple(options)


class Origin(Protocol):
    """Where values came from, so an error names them as the user wrote them."""

    def error(self, option: Option, message: str, value: Any = None) -> ConfigError:
        """``message`` about ``option`` (given as ``value``, when there is one)."""

    def needs(self, option: Option, other: Option, why: str) -> ConfigError:
        """``option`` is given without ``other``, which it needs."""


class _Keywords:
    """Values given as keyword arguments: ``memory=1048576: too small; ...``."""

    def error(self, option: Option, message: str, value: Any = None) -> ConfigError:
        shown = "" if value is None else repr(value)
        return ConfigError(f"{option.name}={shown}: {message}")

    def needs(self, option: Option, other: Option, why: str) -> ConfigError:
        return ConfigError(f"{option.name}= needs {other.name}= ({why})")


KEYWORDS: Origin = _Keywords()


def check_values(values: Mapping[str, Any], origin: Origin,
                 shown: Callable[[Option, Any], Any] | None = None,
                 together: bool = True) -> None:
    """Raise the first problem with ``values`` (keyed by field), worded for ``origin``.

    ``shown(option, value)`` is the value as the user gave it, for the message;
    ``together=False`` leaves out what one option says of another (a config
    file's ``dump_on`` may have its ``dump`` from the command line).
    """
    by_field = {option.field: option for option in machine_options()}
    for name, value in values.items():
        option = by_field.get(name)
        if option is None or value is None:
            continue
        problem = option.kind.problem(value)
        if problem:
            raise origin.error(option, problem, shown(option, value) if shown else value)
    if not together:
        return
    dump_on = values.get("dump_on")
    if dump_on and not values.get("dump"):
        raise origin.needs(by_field["dump_on"], by_field["dump"], "where to write the dump")
    tags = [share.tag for share in values.get("shares", ())]
    if len(set(tags)) != len(tags):
        twice = next(t for t in tags if tags.count(t) > 1)
        raise origin.error(by_field["shares"], f"the tag {twice!r} is given twice")


def config_from_options(**options: Any) -> MachineConfig:
    """The machine these keyword arguments describe (``Machine(**options)`` calls this).

    Keywords are the options' names (``machine_options()``); values may be
    typed (``memory=512 << 20``, ``kernel=Path(...)``, ``drives=[{"path": ...}]``)
    or the text the command line takes (``memory="512M"``).
    """
    by_name = {option.name: option for option in machine_options()}
    values: dict[str, Any] = {}
    for name, raw in options.items():
        option = by_name.get(name)
        if option is None:
            raise ConfigError(f"unknown keyword argument {name}= "
                              f"(known: {', '.join(by_name)})")
        if raw is None and option.default is None:
            continue
        try:
            values[option.field] = option.kind.from_value(raw)
        except BadValue as exc:
            raise KEYWORDS.error(option, str(exc), raw) from None
    if not values.get("kernel"):
        raise ConfigError("no kernel: give kernel=PATH")
    check_values(values, KEYWORDS, lambda option, value: options[option.name]
                 if option.name in options else value)
    return MachineConfig(**values)
