"""Restoring: a snapshot's config, RAM, KVM state and device state, for the builder.

``load_snapshot`` reads and checks the state file and makes the config (with the
per-run options a restore may give); the builder then assembles the machine as
for a boot, but with RAM from ``map_memory`` and, instead of loading a kernel,
``restore_vcpus`` and ``restore_devices``.

A process keeps what it read, checked and decoded of a state file (and the
CPU check's verdict, the CPUID tables, the kernel structs of CPUID and MSRs)
for as long as the file is unchanged (``filecache``): a suite's fixture
restores many clones of one snapshot, and in an emulated host that work
was a third of a restore.  Each restore still opens the state file (its
identity is the cache's key), checks the disk images (their fingerprints
cached the same way) and maps the memory file, checking its length.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from pyvmm.arch.x86_64.cpuid import CpuidEntry
from pyvmm.config.machine import MachineConfig, machine_options
from pyvmm.config.network import NetConfig
from pyvmm.config.tables import DriveConfig
from pyvmm.config.values import BadValue
from pyvmm.errors import ConfigError, HostError, PyvmmError
from pyvmm.kvm._ffi import address_of
from pyvmm.kvm.state import (VcpuState, VmState, kvmclock_ctrl, restore_vcpu, restore_vm)
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.snapshot import MEMORY_FILE, STATE_FILE, SnapshotError, workingset
from pyvmm.snapshot.cpu import missing_features
from pyvmm.snapshot.disks import check_images
from pyvmm.snapshot.memfile import map_memory
from pyvmm.snapshot.save import PER_RUN_OPTIONS, StatefulDevice
from pyvmm.snapshot.filecache import FileCache
from pyvmm.snapshot.stateformat import open_state, read_open_state
from pyvmm.snapshot.workingset import copy_ahead

log = logging.getLogger(__name__)

#: Options a restore may give (by their API names): they belong to the run, not the machine.
#: ``snapshot`` (QEMU's -snapshot) puts each writable disk under a throwaway overlay.
RESTORE_OPTIONS = ("timeout", "control", "dump", "dump_on", "gdb", "gdb_wait", "snapshot")


@dataclass(frozen=True)
class Snapshot:
    """A checked snapshot directory: its config (with the restore's options) and body."""

    directory: str
    config: MachineConfig
    body: dict
    #: Each writable disk under a throwaway copy-on-write overlay (``pyvmm.host.cow_image``).
    overlays: bool = False
    #: Every vCPU's and the VM's KVM state, decoded once (``load_snapshot`` checks them).
    vcpus: tuple[VcpuState, ...] = ()
    vm: VmState | None = None
    #: The state file's checks this process keeps (shared by restores of it).
    checked: "CheckedState | None" = None

    def map_memory(self) -> GuestMemory:
        """The saved RAM, copy-on-write, with the pages earlier clones wrote copied ahead."""
        memory = map_memory(self.directory, self.body["memory"]["layout"])
        key = self._memory_file()
        if key is not None:
            copy_ahead(memory, workingset.learned(key))
        return memory

    def learn_written(self, memory: GuestMemory) -> None:
        """Keep what the clone with ``memory`` wrote for the next clones (``workingset``:
        called as the clone closes, its vCPUs stopped)."""
        key = self._memory_file()
        if key is not None:
            workingset.learn(key, memory, address_of)

    def _memory_file(self) -> workingset.FileKey | None:
        """The memory file's device, inode, size and mtime: what its clones' working set
        is kept by."""
        try:
            info = os.stat(os.path.join(self.directory, MEMORY_FILE))
        except OSError:
            return None
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns

    def clock_advance_ns(self) -> int:
        """Host time since the snapshot (never negative): how far the guest's clocks move on."""
        saved = self.body.get("host_realtime_ns")
        return max(0, time.time_ns() - int(saved)) if saved is not None else 0


def _decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError):
        raise SnapshotError(f"the snapshot's {what} is not base64") from None


def decode_vcpu(state: Mapping[str, Any]) -> VcpuState:
    return VcpuState(int(state["mp_state"]),
                     {name: _decode(data, name) for name, data in state["structs"].items()},
                     [(int(i), int(v)) for i, v in state["msrs"]],
                     [tuple(int(x) for x in leaf) for leaf in state["cpuid"]],  # type: ignore
                     state["tsc_khz"], dict(state["missing"]))


def decode_vm(state: Mapping[str, Any]) -> VmState:
    return VmState({name: _decode(data, name) for name, data in state["structs"].items()},
                   dict(state["missing"]))


def _table(kind: type, saved: Any) -> Any:
    """A [[drive]]/[[net]] table back from JSON (its lists were tuples)."""
    if not isinstance(saved, dict):
        raise TypeError(f"a {kind.__name__} that is not an object")
    return kind(**{key: tuple(value) if isinstance(value, list) else value
                   for key, value in saved.items()})


def restore_config(saved: Mapping[str, Any], overrides: Mapping[str, Any]) -> MachineConfig:
    """The snapshot's machine with the restore's per-run ``overrides`` (API names, values as
    ``Machine()`` takes them).  ConfigError for any other option: the machine is as saved."""
    by_name = {option.name: option for option in machine_options()}
    fields = {field.name for field in dataclasses.fields(MachineConfig)}
    if set(saved) != fields:
        raise SnapshotError("the snapshot's machine config does not match this pyvmm's options")
    values: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in saved.items()}
    if values["shares"]:
        raise SnapshotError("the snapshot has shares, which a restore can't re-attach")
    values["drives"] = tuple(_table(DriveConfig, drive) for drive in values["drives"])
    values["nets"] = tuple(_table(NetConfig, net) for net in values["nets"])
    values.update(PER_RUN_OPTIONS)
    for name, raw in overrides.items():
        if name == "snapshot":
            continue  # not the machine's: load_snapshot's overlays
        if name not in RESTORE_OPTIONS:
            raise ConfigError(f"{name}: a restored machine is the snapshot's; a restore takes "
                              f"only {', '.join(RESTORE_OPTIONS)}")
        option = by_name[name]
        if raw is None:
            continue
        try:
            values[option.field] = option.kind.from_value(raw)
        except BadValue as exc:
            raise ConfigError(f"{name}: {exc}") from None
    try:
        return MachineConfig(**values)
    except PyvmmError as exc:
        raise SnapshotError(f"the snapshot's machine config is refused: {exc}") from None


@dataclass
class CheckedState:
    """A state file read, checked and decoded: what every restore of it starts from.

    Kept per process while the file is unchanged (``filecache``), so a pytest
    suite's many clones of one snapshot don't read, checksum and decode it each.
    Shared by those restores: read-only, but for what is filled in once.
    """

    body: dict
    vcpus: tuple[VcpuState, ...]
    vm: VmState
    #: The machine config per restore's options (``repr`` of them sorted).
    configs: dict[str, MachineConfig] = dataclasses.field(default_factory=dict)
    #: Whether this process's KVM was found to offer the CPU features the guest saw.
    cpu_checked: bool = False
    #: Each vCPU's CPUID table as entries (``saved_cpuid``), made once.
    cpuid: tuple[tuple[CpuidEntry, ...], ...] | None = None


#: Each state file checked, by path, while unchanged.
_CHECKED: FileCache[CheckedState] = FileCache()


def check_state(directory: str, body: dict) -> CheckedState:
    """``body`` decoded and checked for what a restore needs (SnapshotError otherwise)."""
    try:
        vcpus = tuple(decode_vcpu(state) for state in body["vcpus"])
        vm = decode_vm(body["vm"])
        body["config"], body["memory"]["layout"], body["devices"], body["virtio"]  # noqa: B018
        if len(body["disks"]) != len(body["config"]["drives"]):
            raise SnapshotError(f"{directory}: {len(body['disks'])} disk records for "
                                f"{len(body['config']['drives'])} drives")
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{directory}: the state file lacks {exc} (damaged, or "
                            "written by another pyvmm)") from None
    return CheckedState(body, vcpus, vm)


def checked_state(directory: str) -> CheckedState:
    """``directory``'s state file checked: read once per process while it is unchanged."""
    fd, info = open_state(directory)
    try:
        path = os.path.abspath(os.path.join(directory, STATE_FILE))
        checked = _CHECKED.get(path, info)
        if checked is None:
            checked = check_state(directory, read_open_state(fd, path))
            _CHECKED.put(path, info, checked)
        return checked
    finally:
        os.close(fd)


def load_snapshot(directory: str, changed_disks: bool = False, **overrides: Any) -> Snapshot:
    """The checked snapshot in ``directory`` (SnapshotError for anything wrong with it).

    Its disk images must be unchanged since (``pyvmm.snapshot.disks``) unless
    ``changed_disks``; ``snapshot=True`` restores onto throwaway overlays over them.
    """
    checked = checked_state(directory)
    body = checked.body
    key = repr(sorted(overrides.items()))
    config = checked.configs.get(key)
    if config is None:
        try:
            config = restore_config(body["config"], overrides)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{directory}: the state file lacks {exc} (damaged, or "
                                "written by another pyvmm)") from None
        if len(checked.vcpus) != config.cpus:
            raise SnapshotError(f"{directory}: {len(checked.vcpus)} vCPU states for "
                                f"{config.cpus} vCPUs")
        checked.configs[key] = config
    if not changed_disks:
        check_images(directory, body["disks"])
    return Snapshot(directory, config, body, bool(overrides.get("snapshot")), checked.vcpus,
                    checked.vm, checked)


def check_cpu(snapshot: Snapshot, kvm: Kvm) -> None:
    """HostError naming the CPU features the guest saw that this host's KVM can't offer."""
    if snapshot.checked is not None and snapshot.checked.cpu_checked:
        return  # this process's KVM passed it for this state file
    supported = [CpuidEntry(*leaf) for leaf in kvm.supported_cpuid()]
    for index, saved in enumerate(saved_cpuid(snapshot)):
        missing = missing_features(saved, supported, index, snapshot.config.cpus,
                                   kvm.has_tsc_deadline_timer())
        if missing:
            raise HostError(f"{snapshot.directory}: the guest saw CPU features this host "
                            f"lacks: {', '.join(missing[:6])}"
                            f"{' ...' if len(missing) > 6 else ''}")
    if snapshot.checked is not None:
        snapshot.checked.cpu_checked = True


def saved_cpuid(snapshot: Snapshot) -> list[list[CpuidEntry]]:
    """Each vCPU's CPUID table as the snapshot has it (made once per checked state file;
    the entries are frozen, the lists the caller's)."""
    checked = snapshot.checked
    if checked is not None and checked.cpuid is not None:
        return [list(leaves) for leaves in checked.cpuid]
    tables = [[CpuidEntry(*leaf) for leaf in state.cpuid] for state in snapshot.vcpus]
    if checked is not None:
        checked.cpuid = tuple(tuple(leaves) for leaves in tables)
    return tables


def restore_vcpus(snapshot: Snapshot, kvm: Kvm, vcpus: Sequence[Vcpu],
                  advance_ns: int = 0) -> list[str]:
    """Every vCPU's saved state (its CPUID first), written in KVM's order, its TSC moved
    on by ``advance_ns``; warnings for parts left at reset."""
    warnings: list[str] = []
    for vcpu, state in zip(vcpus, snapshot.vcpus):
        warnings += restore_vcpu(kvm, vcpu, state, advance_ns)
    return warnings


def restore_machine_state(snapshot: Snapshot, kvm: Kvm, vm: Vm, vcpus: Sequence[Vcpu],
                          devices: Mapping[str, StatefulDevice],
                          virtio: Sequence[StatefulDevice], advance_ns: int = 0) -> list[str]:
    """The VM's irqchip, PIT and clock (moved on by ``advance_ns``), then each device's
    state; KVMCLOCK_CTRL last."""
    assert snapshot.vm is not None
    warnings = restore_vm(kvm, vm, snapshot.vm, advance_ns)
    saved_devices = snapshot.body["devices"]
    if set(saved_devices) != set(devices) or len(snapshot.body["virtio"]) != len(virtio):
        raise SnapshotError(f"{snapshot.directory}: its devices are not this machine's")
    try:
        for name, device in devices.items():
            device.from_state(saved_devices[name])
        for transport, state in zip(virtio, snapshot.body["virtio"]):
            transport.from_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{snapshot.directory}: a device's state is refused: "
                            f"{exc}") from None
    for vcpu in vcpus:
        kvmclock_ctrl(vcpu)
    return warnings
