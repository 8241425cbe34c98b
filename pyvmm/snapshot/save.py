"""Taking a snapshot of a paused machine: its KVM state, its devices' and its RAM."""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from pyvmm.version import VERSION
from pyvmm.arch.x86_64.cpuid import CpuidEntry
from pyvmm.arch.x86_64.msr import msr_is_saved
from pyvmm.config.machine import MachineConfig
from pyvmm.kvm.state import (VcpuState, VmState, complete_pending, msr_index_list, save_vcpu,
                             save_vm)
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.snapshot import MEMORY_FILE, STATE_FILE, SnapshotError
from pyvmm.snapshot.memfile import write_memory
from pyvmm.snapshot.stateformat import write_state

#: Options of one run, not of the machine: a restore gives its own (or none).
PER_RUN_OPTIONS: dict[str, Any] = {"timeout": None, "control": None, "dump": None, "dump_on": (),
                   "gdb": None, "gdb_wait": False}


class StatefulDevice(Protocol):
    """A device a snapshot keeps: its state as plain JSON values, and back."""

    def to_state(self) -> dict: ...

    def from_state(self, state: dict) -> None: ...


@dataclass(frozen=True)
class SnapshotInfo:
    """What ``save_snapshot`` wrote."""

    directory: str
    #: Seconds from the vCPUs' state read to the state file written (the guest's pause).
    seconds: float
    #: Guest RAM, and the bytes of it written (the rest were zero pages: holes).
    ram_bytes: int
    written_bytes: int


#: Why a share can't be in a snapshot (Firecracker refuses vhost-user devices too).
SHARE_REFUSED = ("a machine with --share can't be snapshotted: virtiofsd keeps the share's "
                 "open files and FUSE session, which vhost-user can't hand to a new "
                 "virtiofsd, and a restored guest's RAM (the memory file mapped privately) "
                 "can't be shared with a vhost-user back end")


def refuse_unsupported(config: MachineConfig) -> None:
    """SnapshotError for a machine whose state lives outside pyvmm."""
    if config.stdio_ports:
        raise SnapshotError("command mode's machine can't be snapshotted")
    if config.vsock is not None or config.vsock_auto:
        raise SnapshotError("a machine with --vsock can't be snapshotted yet: the kernel's "
                            "vhost-vsock holds its connections, outside pyvmm")
    if config.shares:
        raise SnapshotError(SHARE_REFUSED)
    if any(net.type == "tap" for net in config.nets):
        raise SnapshotError("a machine with --net tap can't be snapshotted yet: the tap and "
                            "vhost-net's rings hold state outside pyvmm")


def disk_images(virtio: Sequence[StatefulDevice]) -> list[dict]:
    """Each disk pyvmm serves, flushed and named by its identity (``snapshot.disks``), in
    --drive order; SnapshotError for a disk whose data lives where a snapshot can't see."""
    from pyvmm.devices.virtio.block import BlockDevice
    from pyvmm.devices.virtio.vhost_user import VhostBlockDevice
    from pyvmm.host.cow_image import CowImage
    from pyvmm.snapshot.disks import identity

    images = []
    for transport in virtio:
        device = getattr(transport, "device", None)
        if isinstance(device, VhostBlockDevice):
            raise SnapshotError(
                "a drive served by qemu-storage-daemon (a qcow2 or other format, "
                "snapshot=on, backend=qsd) can't be snapshotted: its state is the daemon's, "
                "and a restored guest's RAM (the memory file mapped privately) can't be "
                "shared with a vhost-user back end; give raw drives, which pyvmm serves "
                "(restore with --snapshot for throwaway overlays)")
        if isinstance(getattr(device, "disk", None), CowImage):
            raise SnapshotError("a clone restored onto throwaway disk overlays can't be "
                                "snapshotted: what it wrote to its disks is not kept")
        if isinstance(device, BlockDevice):
            device.disk.flush()
            images.append({**identity(os.path.abspath(device.disk.path)),
                           "readonly": device.disk.readonly})
    return images


def _prepare_directory(directory: str) -> None:
    """``directory`` made owner-only if new; an existing one must not hold a snapshot."""
    try:
        os.mkdir(directory, 0o700)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise SnapshotError(f"cannot make {directory}: {exc.strerror}") from None
    if not os.path.isdir(directory) or os.path.islink(directory):
        raise SnapshotError(f"{directory} exists and is not a directory")
    for name in (STATE_FILE, MEMORY_FILE):
        if os.path.lexists(os.path.join(directory, name)):
            raise SnapshotError(f"{directory} already holds a snapshot ({name}): "
                                "give a new directory")


def encode_vcpu(state: VcpuState) -> dict:
    return {"mp_state": state.mp_state,
            "structs": {name: base64.b64encode(data).decode()
                        for name, data in state.structs.items()},
            "msrs": [list(pair) for pair in state.msrs],
            "cpuid": [list(leaf) for leaf in state.cpuid],
            "tsc_khz": state.tsc_khz, "missing": state.missing}


def encode_vm(state: VmState) -> dict:
    return {"structs": {name: base64.b64encode(data).decode()
                        for name, data in state.structs.items()},
            "missing": state.missing}


def config_body(config: MachineConfig) -> dict:
    """The machine as saved: no per-run options, disk images by absolute path (a restore
    may run elsewhere)."""
    drives = tuple(dataclasses.replace(drive, path=os.path.abspath(drive.path))
                   for drive in config.drives)
    return dataclasses.asdict(dataclasses.replace(config, drives=drives, **PER_RUN_OPTIONS))


def save_snapshot(directory: str, *, config: MachineConfig, kvm: Kvm, vm: Vm,
                  vcpus: Sequence[Vcpu], cpuid: Sequence[Sequence[CpuidEntry]],
                  memory: GuestMemory,
                  devices: Mapping[str, StatefulDevice],
                  virtio: Sequence[StatefulDevice]) -> SnapshotInfo:
    """Write the machine to ``directory`` (made if missing).  Every vCPU must be out of
    KVM_RUN and device work stopped (the caller pauses the machine) until this returns.
    ``cpuid`` is each vCPU's CPUID table as the builder set it."""
    refuse_unsupported(config)
    images = disk_images(virtio)
    directory = os.path.abspath(directory)
    _prepare_directory(directory)
    start = time.perf_counter()
    try:
        for vcpu in vcpus:
            complete_pending(vcpu)
        msr_indices = [index for index in msr_index_list(kvm) if msr_is_saved(index)]
        body: dict[str, Any] = {
            "pyvmm": VERSION, "config": config_body(config),
            "vcpus": [encode_vcpu(save_vcpu(kvm, vcpu, msr_indices,
                                            [dataclasses.astuple(leaf) for leaf in leaves]))
                      for vcpu, leaves in zip(vcpus, cpuid)],
            "vm": encode_vm(save_vm(kvm, vm)),
            # The host's time when kvmclock was read: a restore moves the guest's
            # clocks (kvmclock, the TSC) on by the time since.
            "host_realtime_ns": time.time_ns(),
            "devices": {name: device.to_state() for name, device in devices.items()},
            "virtio": [transport.to_state() for transport in virtio],
            "disks": images}
        layout, written = write_memory(directory, memory)
        body["memory"] = {"file": MEMORY_FILE, "layout": [list(entry) for entry in layout]}
        write_state(directory, body)
    except BaseException:
        for name in (STATE_FILE, MEMORY_FILE):  # a half-written snapshot is no snapshot
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        raise
    return SnapshotInfo(directory, time.perf_counter() - start, memory.total_size, written)
