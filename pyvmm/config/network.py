"""The ``[[net]]`` table and ``--net`` spec: a guest NIC and the back end behind it.

``--net user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=MAC]`` is
QEMU's ``-nic user`` spelling (passt serves it); ``--net tap=NAME[,vhost=on|off|auto]
[,mac=MAC]`` is QEMU's ``-nic tap,ifname=NAME,vhost=on`` (``tap,ifname=NAME`` is
taken too): a host tap interface, its queues served by the kernel's vhost-net
where it can; ``--net none`` says no NIC (it overrides a config file's
``[[net]]``).  No I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from pyvmm.config.tables import split_options, table_key, table_keys
from pyvmm.config.values import BadValue, ChoiceKind, Kind, TextKind
from pyvmm.errors import ConfigError

#: Kinds of back end: user-mode networking (passt), a host tap interface, or no NIC.
NET_TYPES = ("user", "tap", "none")
#: Who serves a tap NIC's queues: the kernel's vhost-net (on), pyvmm (off), or
#: vhost-net where /dev/vhost-net opens, else pyvmm (auto).
VHOST_MODES = ("auto", "on", "off")
#: Linux's interface names: at most IFNAMSIZ - 1 bytes, none of these (dev_valid_name).
IFNAME_BYTES = 15
IFNAME_FORBIDDEN = "/: \t\n"
#: QEMU's hostfwd: PROTOCOL:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (the
#: first colon may be left out: tcp:8080-:80).
_HOSTFWD = re.compile(r"^(tcp|udp):(?:([0-9.]*):)?(\d+)-([0-9.]*):(\d+)$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Forward(NamedTuple):
    """One hostfwd: connections to HOSTADDR:HOSTPORT on the host reach GUESTPORT in the guest."""

    protocol: str
    host_address: str
    host_port: int
    guest_port: int

    def passt_spec(self) -> str:
        """passt's ``-t``/``-u`` spec: ``[ADDR/]PORT:GUESTPORT``."""
        address = f"{self.host_address}/" if self.host_address else ""
        return f"{address}{self.host_port}:{self.guest_port}"


def parse_hostfwd(text: str) -> Forward:
    """A ``hostfwd=`` value; BadValue saying what it should look like."""
    match = _HOSTFWD.match(text)
    if not match:
        raise BadValue(f"hostfwd={text!r}: use tcp::HOSTPORT-:GUESTPORT or "
                       "udp:HOSTADDR:HOSTPORT-:GUESTPORT")
    protocol, host_address, host_port, guest_address, guest_port = match.groups()
    if guest_address:
        raise BadValue(f"hostfwd={text!r}: passt forwards to the guest's own address; "
                       "leave GUESTADDR out")
    ports = int(host_port), int(guest_port)
    if not all(0 < port < 65536 for port in ports):
        raise BadValue(f"hostfwd={text!r}: ports are 1-65535")
    return Forward(protocol, host_address or "", *ports)


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` as 6 bytes; BadValue unless a unicast MAC."""
    if not _MAC.match(text):
        raise BadValue(f"mac={text!r}: write six hex pairs, 52:54:00:12:34:56")
    mac = bytes.fromhex(text.replace(":", ""))
    if mac[0] & 1:
        raise BadValue(f"mac={text!r} is a multicast address (its first byte is odd)")
    return mac


class ForwardsKind(Kind):
    """hostfwd specs: one per ``hostfwd=`` key of a spec, a list in TOML."""

    toml_types = (list, str)
    toml_name = "a list of hostfwd specs"

    def from_text(self, text: str) -> tuple[str, ...]:
        return (text,)

    def from_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        return super().from_value(value)

    def problem(self, value: Any) -> str | None:
        for spec in value:
            try:
                parse_hostfwd(spec)
            except BadValue as exc:
                return str(exc)
        return None

    def show(self, value: Any) -> str:
        return " ".join(value)


class MacKind(Kind):
    """A unicast MAC, or "" for the default (``NetConfig.guest_mac``)."""

    def problem(self, value: Any) -> str | None:
        if not value:
            return None
        try:
            parse_mac(value)
        except BadValue as exc:
            return str(exc)
        return None


@dataclass(frozen=True)
class NetConfig:
    """One --net / [[net]]: a virtio-net NIC and its back end."""

    type: str = field(metadata=table_key("user (passt) or none", ChoiceKind(NET_TYPES)))
    hostfwd: tuple[str, ...] = field(default=(), metadata=table_key(
        "forward a host port inward: tcp::HOSTPORT-:GUESTPORT (udp: too)", ForwardsKind()))
    mac: str = field(default="", metadata=table_key(
        "the NIC's MAC (default: user 52:54:00:12:34:56, :57 for the next, ...; "
        "tap 52:54:00 and three bytes of a hash of the tap's name)", MacKind()))
    ifname: str = field(default="", metadata=table_key(
        "tap: the host's tap interface (made, and gone at exit, if it is not there "
        "and pyvmm may: root)", TextKind(IFNAME_BYTES, 0, IFNAME_FORBIDDEN)))
    vhost: str = field(default="auto", metadata=table_key(
        "tap: the kernel's vhost-net serves the queues (on), pyvmm does (off), or "
        "vhost-net where /dev/vhost-net opens (auto)", ChoiceKind(VHOST_MODES)))

    def __post_init__(self) -> None:
        if self.type == "none" and (self.hostfwd or self.mac or self.ifname):
            raise BadValue("none takes no other key")
        if self.type == "tap" and not self.ifname:
            raise BadValue("tap needs the interface's name: tap=NAME")
        if self.type == "tap" and self.hostfwd:
            raise BadValue("hostfwd= is for user; a tap's guest is reached on the tap's "
                           "network")
        if self.type != "tap" and (self.ifname or self.vhost != "auto"):
            raise BadValue("ifname= and vhost= are for tap")

    @property
    def forwards(self) -> tuple[Forward, ...]:
        return tuple(parse_hostfwd(spec) for spec in self.hostfwd)

    def guest_mac(self, index: int) -> bytes:
        """The MAC the guest sees on the ``index``-th NIC: ``mac=``, else a default.

        A user NIC has a network of its own (its own passt), so QEMU's defaults
        serve (52:54:00:12:34:56, :57 for the next...).  Taps may share a bridge,
        where QEMU's one default collides: a tap NIC's default comes from its
        tap's name, so it is stable across runs and differs between the
        machines on one bridge (a host's taps have distinct names).
        """
        if self.mac:
            return parse_mac(self.mac)
        if self.type == "tap":
            return bytes((0x52, 0x54, 0x00)) + hashlib.sha256(
                self.ifname.encode()).digest()[:3]
        return bytes((0x52, 0x54, 0x00, 0x12, 0x34, (0x56 + index) & 0xFF))


def parse_net(text: str, index: int = 0) -> NetConfig:
    """``user[,hostfwd=...]...[,mac=MAC]``, ``tap=NAME[,vhost=on|off|auto][,mac=MAC]``
    (or ``tap,ifname=NAME,...``) or ``none``; ``,,`` is a comma of a value."""
    first, *options = split_options(text)
    kind, _, ifname = first.strip().partition("=")
    if kind not in NET_TYPES or ifname and kind != "tap":
        raise ConfigError(f"--net {text!r}: {first.strip()!r} is not a network back end "
                          f"(use user, tap=NAME or none)")
    forwards: list[str] = []
    given: dict[str, str] = {"ifname": ifname.strip()} if ifname else {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if key == "hostfwd" and sep:
            forwards.append(value.strip())
        elif key in ("mac", "ifname", "vhost") and sep and key not in given:
            given[key] = value.strip()
        else:
            raise ConfigError(f"--net {text!r}: unknown option {option!r} "
                              f"({', '.join(k + '=' for k in table_keys(NetConfig) if k != 'type')})")
    try:
        net = NetConfig(kind, tuple(forwards), **given)
    except BadValue as exc:
        raise ConfigError(f"--net {text!r}: {exc}") from None
    for name, kind_of in table_keys(NetConfig).items():
        problem = kind_of.problem(getattr(net, name))
        if problem:
            key = "" if problem.startswith(name + "=") else f"{name}={getattr(net, name)}: "
            raise ConfigError(f"--net {text!r}: {key}{problem}")
    return net


def nics(nets: Sequence[NetConfig]) -> list[NetConfig]:
    """The NICs a machine gets: ``none`` entries stand for none."""
    return [net for net in nets if net.type != "none"]
