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
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Protocol

from pyvmm.config.network import NetConfig, parse_net
from pyvmm.config.tables import DriveConfig, ShareConfig, TablesKind, parse_drive, parse_share
from pyvmm.config.values import (BadValue, ChoiceKind, CountKind, EventsKind, GdbAddressKind,
                                 Kind, PathKind, SecondsKind, SizeKind, SwitchKind)
from pyvmm.errors import ConfigError
from pyvmm.limits import MAX_CPUS

__all__ = ["MachineConfig", "Option", "option_metadata", "options_of", "machine_options",
           "config_from_options", "check_values"]

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
EMULATION_ASSIST = ("auto", "on", "off")


class Option(NamedTuple):
    """One machine option, as every front end sees it (a NamedTuple: a fifth of a
    frozen dataclass's class-creation time, which every ``pyvmm`` start pays)."""

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


def option_metadata(*flags: str, help: str, kind: Kind | None = None, name: str = "",
            toml: str = "", metavar: str | None = None, multiple: bool = False) -> dict:
    """Field metadata declaring an option; the field gives its attribute and default."""
    return {"option": dict(flags=flags, help=help, kind=kind or Kind(), name=name, toml=toml,
                           metavar=metavar, multiple=multiple)}


#: vCPUs: xAPIC IDs are 8 bits (see pyvmm.limits).
_CPUS = CountKind(1, MAX_CPUS, "a machine needs at least one vCPU",
                  f"the platform describes at most {MAX_CPUS} vCPUs (8-bit xAPIC IDs)")


#: A guest's vsock address: 0-2 are reserved (hypervisor, loopback, host), 2**32-1 is "any".
_CID = CountKind(3, 0xFFFF_FFFE, "CIDs 0, 1 and 2 are reserved (2 is the host): give 3 or more",
                 "a CID is 32 bits and 4294967295 means any: give at most 4294967294")


@dataclass(frozen=True)
class MachineConfig:
    """Everything ``pyvmm run`` needs to build and run one VM."""

    kernel: str = field(metadata=option_metadata(
        "--kernel", "-k", kind=PathKind(),
        help="Kernel to boot: a bzImage, or an ELF vmlinux with a PVH entry."))
    initrd: str | None = field(default=None, metadata=option_metadata(
        "--initrd", "-i", kind=PathKind(),
        help="Initial ramdisk (e.g. a cpio archive) handed to the kernel."))
    cmdline: str = field(default=DEFAULT_CMDLINE, metadata=option_metadata(
        "--append", "-a", name="append", metavar="CMDLINE",
        help=f"Kernel command line (default: {DEFAULT_CMDLINE!r})."))
    memory: int = field(default=512 << 20, metadata=option_metadata(
        "--memory", "-m", kind=SizeKind(), metavar="SIZE",
        help="Guest RAM, e.g. 512M or 2G (a bare number is MiB; default 512M)."))
    cpus: int = field(default=1, metadata=option_metadata(
        "--cpus", "-c", kind=_CPUS, help="Number of vCPUs (default 1)."))
    timeout: float | None = field(default=None, metadata=option_metadata(
        "--timeout", "-t", kind=SecondsKind(), metavar="SECONDS",
        help="Stop the guest after SECONDS and exit 124."))
    cpu_policy: str = field(default="auto", metadata=option_metadata(
        "--cpu", name="cpu", kind=ChoiceKind(CPU_POLICIES),
        help="CPU features shown to the guest: host (all KVM supports), compat "
             "(hide what software emulation can't run), auto (default: compat "
             "on a kvm_pvm host, else host)."))
    drives: tuple[DriveConfig, ...] = field(default=(), metadata=option_metadata(
        "--drive", "-d", toml="drive", metavar="SPEC", multiple=True,
        kind=TablesKind(DriveConfig, parse_drive),
        help="A virtio-block disk: path=IMG[,format=raw|qcow2|...][,readonly=on]"
             "[,cache=none|writeback][,serial=ID][,snapshot=on[,overlay=FILE]]"
             "[,backend=auto|pyvmm|qsd] (a comma in a name: ,,).  Repeat for vda, "
             "vdb, ..."))
    snapshot: bool = field(default=False, metadata=option_metadata(
        "--snapshot/--no-snapshot", kind=SwitchKind(),
        help="Throw away the guest's disk writes: snapshot=on for every "
             "writable --drive (QEMU's -snapshot)."))
    #: Host directories given to the guest over virtio-fs (vhost-user, virtiofsd).
    shares: tuple[ShareConfig, ...] = field(default=(), metadata=option_metadata(
        "--share", toml="share", metavar="DIR[,tag=NAME][,ro]", multiple=True,
        kind=TablesKind(ShareConfig, parse_share),
        help="Give the guest a host directory over virtio-fs (a virtiofsd per "
             "share): mount -t virtiofs NAME /mnt (default tags share0, "
             "share1, ...; a comma in a name: ,,).  Repeatable."))
    #: Guest NICs (virtio-net), each with its back end.
    nets: tuple[NetConfig, ...] = field(default=(), metadata=option_metadata(
        "--net", toml="net",
        metavar="user[,hostfwd=tcp::HOSTPORT-:GUESTPORT][,mac=MAC]|tap=NAME[,vhost=on|off|auto]"
                "[,mac=MAC]|none",
        multiple=True, kind=TablesKind(NetConfig, parse_net),
        help="A virtio-net NIC: user is user-mode networking through passt (the "
             "guest's gateway address reaches the host's loopback; hostfwd= forwards "
             "a host port inward, QEMU's spelling; repeatable); tap=NAME a host tap "
             "interface (made if missing and pyvmm may: root), its queues served by the "
             "kernel's vhost-net where /dev/vhost-net opens (vhost=on insists, off: "
             "pyvmm serves them); none: no NIC.  "
             "Repeat for eth0, eth1, ..."))
    vsock: int | None = field(default=None, metadata=option_metadata(
        "--vsock", kind=_CID, metavar="CID",
        help="A virtio-vsock device served by the host kernel's vhost-vsock (QEMU's "
             "-device vhost-vsock-pci,guest-cid=CID): host programs connect to the "
             "guest at AF_VSOCK address CID (3 or more), the guest to the host at 2.  "
             "Needs read-write /dev/vhost-vsock (modprobe vhost_vsock)."))
    #: A vsock on the first free CID (command mode with --control, so that
    #: ``pyvmm exec`` reaches its agent; set by command mode, not an option).
    vsock_auto: bool = False
    #: A multiport virtio console carrying the command mode's stdin/stdout/stderr
    #: (set by command mode, not an option).
    stdio_ports: bool = False
    virtio_console: bool = field(default=True, metadata=option_metadata(
        "--virtio-console/--no-virtio-console", kind=SwitchKind(),
        help="Give the guest a virtio console, hvc0 (default on); with "
             "console=hvc0 on the command line it takes the terminal."))
    rng: bool = field(default=False, metadata=option_metadata(
        "--rng/--no-rng", kind=SwitchKind(),
        help="Give the guest a virtio entropy device, /dev/hwrng, fed from the "
             "host's getrandom (default off, as in QEMU and Firecracker)."))
    virtio_announce: str = field(default="both", metadata=option_metadata(
        "--virtio-announce", kind=ChoiceKind(VIRTIO_ANNOUNCE),
        help="How the guest learns of virtio devices: the kernel command line "
             "(virtio_mmio.device=, needs VIRTIO_MMIO_CMDLINE_DEVICES), the ACPI "
             "DSDT, or both (default)."))
    acpi: bool = field(default=True, metadata=option_metadata(
        "--acpi/--no-acpi", kind=SwitchKind(),
        help="Give the guest ACPI tables (default on): CPUs, devices, poweroff."))
    dump: str | None = field(default=None, metadata=option_metadata(
        "--dump", kind=PathKind(),
        help="Write an ELF core of the guest (as QEMU's dump-guest-memory) "
             "here; read it with 'pyvmm inspect'."))
    dump_on: tuple[str, ...] = field(default=(), metadata=option_metadata(
        "--dump-on", kind=EventsKind(DUMP_EVENTS), multiple=True,
        help="When to dump (repeatable; default panic and timeout): guest "
             "panic / triple fault / KVM failure, any exit, SIGUSR1 (live), "
             "--timeout."))
    control: str | None = field(default=None, metadata=option_metadata(
        "--control", kind=PathKind(),
        help="Listen on this unix socket for live dumps and snapshots "
             "('pyvmm inspect summary SOCKET' reads the running guest)."))
    gdb: str | None = field(default=None, metadata=option_metadata(
        "--gdb", kind=GdbAddressKind(), metavar="[HOST:]PORT|unix:PATH",
        help="Let gdb debug the guest: listen for one gdb on a TCP port "
             "(127.0.0.1 unless HOST is given) or a private unix socket "
             "(QEMU's -gdb tcp::PORT; -s is --gdb 1234).  While gdb holds "
             "the guest stopped, --timeout does not count."))
    gdb_wait: bool = field(default=False, metadata=option_metadata(
        "--gdb-wait/--no-gdb-wait", kind=SwitchKind(),
        help="No vCPU runs until gdb attaches and continues (QEMU's -S)."))
    emulation_assist: str = field(default="auto", metadata=option_metadata(
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
        if self.snapshot:
            object.__setattr__(self, "drives", tuple(
                dataclasses.replace(d, snapshot=True) if not d.readonly else d
                for d in self.drives))


def options_of(schema: type) -> tuple[Option, ...]:
    """The options a dataclass declares with ``option_metadata``, in field order."""
    options = []
    for f in dataclasses.fields(schema):
        if "option" in f.metadata:
            spec = dict(f.metadata["option"])
            spec["name"] = spec["name"] or f.name
            spec["toml"] = spec["toml"] or spec["name"]
            default = None if f.default is dataclasses.MISSING else f.default
            options.append(Option(field=f.name, default=default, **spec))
    return tuple(options)


@functools.cache
def machine_options() -> tuple[Option, ...]:
    """Every option of a machine, in ``pyvmm run --help`` order."""
    return options_of(MachineConfig)


if TYPE_CHECKING:  # a type only: a Protocol class costs start-up time to make
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
    if values.get("gdb_wait") and not values.get("gdb"):
        raise origin.needs(by_field["gdb_wait"], by_field["gdb"], "where gdb attaches")
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
