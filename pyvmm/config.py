"""The machine's configuration: frozen dataclasses and validation, no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pyvmm.arch.x86_64.cpuid import MAX_CPUS
from pyvmm.errors import ConfigError

#: The guest command line used when --append is not given.
DEFAULT_CMDLINE = "console=ttyS0 reboot=k"
#: Smallest guest RAM we accept; a kernel needs more, and says so when loaded.
MIN_MEMORY = 16 << 20
#: Largest guest RAM we accept (guest-physical addresses stay below 1 TiB + 4 GiB;
#: whether the host can back it is found when RAM is reserved).
MAX_MEMORY = 1 << 40
#: Longest --timeout: a year (longer is a mistake, and time.monotonic() + it must stay exact).
MAX_TIMEOUT = 366 * 24 * 3600.0
#: CPU feature policies: see pyvmm.arch.x86_64.cpuid.
CPU_POLICIES = ("auto", "host", "compat")
#: When a dump is written: guest panic (pvpanic, triple fault, KVM failure), any
#: exit, SIGUSR1 (live: the guest pauses, is dumped, resumes), --timeout.
DUMP_EVENTS = ("panic", "exit", "signal", "timeout")
DEFAULT_DUMP_EVENTS = ("panic", "timeout")
#: Ways of telling the guest about virtio-mmio devices.
VIRTIO_ANNOUNCE = ("both", "acpi", "cmdline")

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_name(size: int) -> str:
    """``size`` as a user would write it: 512M, 2G, or bytes."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size > 0 and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size} bytes"


# What is wrong with a value, or None: shared by the command line (MachineConfig)
# and config files (which add the file and line), so each limit is stated once.

def memory_problem(size: int) -> str | None:
    if size < MIN_MEMORY:
        return f"too small; pyvmm needs at least {MIN_MEMORY >> 20}M"
    if size % 4096:
        return "must be a multiple of 4 KiB"
    if size > MAX_MEMORY:
        return f"more than pyvmm gives a guest ({size_name(MAX_MEMORY)})"
    return None


def cpus_problem(count: int) -> str | None:
    if count < 1:
        return "a machine needs at least one vCPU"
    if count > MAX_CPUS:
        return f"the platform describes at most {MAX_CPUS} vCPUs (8-bit xAPIC IDs)"
    return None


def timeout_problem(seconds: float) -> str | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return "must be a positive number of seconds"
    if seconds > MAX_TIMEOUT:
        return f"longer than a year ({MAX_TIMEOUT:g} s)"
    return None


def parse_size(text: str) -> int:
    """Bytes in a size such as ``512M``, ``2G``, ``1GiB`` or ``768`` (MiB, as QEMU's -m)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{text!r} is not a size (use e.g. 512M or 2G)")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number * _SIZE_UNITS[unit]


#: Values of ``cache=`` in --drive: page-cache writeback, or O_DIRECT.
CACHE_MODES = ("writeback", "none")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
#: Other names --drive takes for a key (QEMU's -drive says file=).
_DRIVE_ALIASES = {"file": "path"}


@dataclass(frozen=True)
class DriveConfig:
    """One --drive: a raw image file and how to open it."""

    path: str
    readonly: bool = False
    cache: str = "writeback"
    serial: str = ""


def parse_drive(text: str) -> DriveConfig:
    """``path=disk.img[,readonly=on][,cache=none|writeback][,serial=ID]`` (QEMU-style).

    A bare ``disk.img`` is taken as the path.
    """
    fields: dict[str, str] = {}
    for index, part in enumerate(text.split(",")):
        key, sep, value = part.partition("=")
        if not sep and index == 0:
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
    unknown = set(fields) - {"path", "readonly", "cache", "serial"}
    if unknown:
        raise ConfigError(f"--drive {text!r}: unknown option {sorted(unknown)[0]!r} "
                          "(path, readonly, cache, serial)")
    path = fields.get("path")
    if not path:
        raise ConfigError(f"--drive {text!r}: path= is missing")
    readonly = fields.get("readonly", "off").lower()
    if readonly not in _ON + _OFF:
        raise ConfigError(f"--drive {text!r}: readonly={readonly} (use on or off)")
    cache = fields.get("cache", "writeback")
    if cache not in CACHE_MODES:
        raise ConfigError(f"--drive {text!r}: cache={cache} (use none or writeback)")
    serial = fields.get("serial", "")
    if len(serial.encode()) > 20:
        raise ConfigError(f"--drive {text!r}: serial is longer than 20 bytes")
    return DriveConfig(path, readonly in _ON, cache, serial)


@dataclass(frozen=True)
class ShareConfig:
    """One --share: a host directory the guest mounts with ``mount -t virtiofs TAG``."""

    path: str
    tag: str
    readonly: bool = False


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
        elif key in ("ro", "readonly") and (not sep or value in _ON + _OFF):
            readonly = not sep or value in _ON
        elif key == "rw" and not sep:
            readonly = False
        else:
            raise ConfigError(f"--share {text!r}: unknown option {option!r} (tag=NAME, ro)")
    if not 0 < len(tag.encode()) <= 36:
        raise ConfigError(f"--share {text!r}: the tag must be 1 to 36 bytes")
    return ShareConfig(path, tag, readonly)


@dataclass(frozen=True)
class MachineConfig:
    """Everything ``pyvmm run`` needs to build and run one VM."""

    kernel: str
    initrd: str | None = None
    cmdline: str = DEFAULT_CMDLINE
    memory: int = 512 << 20
    cpus: int = 1
    timeout: float | None = None
    cpu_policy: str = "auto"
    drives: tuple[DriveConfig, ...] = ()
    #: Host directories given to the guest over virtio-fs (vhost-user, virtiofsd).
    shares: tuple[ShareConfig, ...] = ()
    #: A multiport virtio console carrying the command mode's stdin/stdout/stderr.
    stdio_ports: bool = False
    virtio_console: bool = True
    #: Where the guest learns of virtio devices: "cmdline", "acpi" or "both".
    virtio_announce: str = "both"
    #: Write ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) into guest memory.
    acpi: bool = True
    #: Write an ELF core of the guest here when one of ``dump_on`` happens.
    dump: str | None = None
    dump_on: tuple[str, ...] = ()
    #: A unix socket on which the running VMM takes live-dump requests.
    control: str | None = None
    #: Finish int3/fwait when software-emulating KVM can't ("auto": on kvm_pvm).
    emulation_assist: str = "auto"

    def __post_init__(self) -> None:
        problem = memory_problem(self.memory)
        if problem:
            raise ConfigError(f"--memory {size_name(self.memory)}: {problem}")
        problem = cpus_problem(self.cpus)
        if problem:
            raise ConfigError(f"--cpus {self.cpus}: {problem}")
        problem = None if self.timeout is None else timeout_problem(self.timeout)
        if problem:
            raise ConfigError(f"--timeout {self.timeout:g}: {problem}")
        if self.virtio_announce not in VIRTIO_ANNOUNCE:
            raise ConfigError(f"--virtio-announce {self.virtio_announce!r}: choose one of "
                              f"{', '.join(VIRTIO_ANNOUNCE)}")
        if self.virtio_announce in ("acpi", "both") and not self.acpi:
            object.__setattr__(self, "virtio_announce", "cmdline")
        bad = set(self.dump_on) - set(DUMP_EVENTS)
        if bad:
            raise ConfigError(f"--dump-on {sorted(bad)[0]!r}: choose from {', '.join(DUMP_EVENTS)}")
        if self.dump_on and not self.dump:
            raise ConfigError("--dump-on needs --dump PATH (where to write the dump)")
        if self.dump and not self.dump_on:
            object.__setattr__(self, "dump_on", DEFAULT_DUMP_EVENTS)
        tags = [share.tag for share in self.shares]
        if len(set(tags)) != len(tags):
            raise ConfigError(f"--share: the tag {next(t for t in tags if tags.count(t) > 1)!r} "
                              "is given twice")
        if self.emulation_assist not in ("auto", "on", "off"):
            raise ConfigError(f"--emulation-assist {self.emulation_assist!r}: auto, on or off")
        if self.cpu_policy not in CPU_POLICIES:
            raise ConfigError(f"--cpu {self.cpu_policy!r}: choose one of {', '.join(CPU_POLICIES)}")
