"""The host facts ``pyvmm check`` judges, read from /dev, /sys, /proc and PATH.

Reading is kept apart from judging (``capabilities``): ``HostFacts`` is plain
data, and ``gather`` is the only function here that looks at the host.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass, field

from pyvmm.command.initramfs.build import WANTED_MODULES
from pyvmm.command.initramfs.modules import find_modules
from pyvmm.errors import SEE_CHECK, PyvmmError
from pyvmm.host import environment
from pyvmm.kvm import system as kvm_system
from pyvmm.memory import huge_tmpfs_possible

#: Device nodes checked by opening them read-write (the way pyvmm or a back end would).
DEVICES = ("/dev/vhost-net", "/dev/vhost-vsock", "/dev/net/tun")
#: The KVM vendor modules, by what each means for a guest.
KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
#: Where the kernel says when it backs memory with transparent huge pages.
THP_SETTINGS = "/sys/kernel/mm/transparent_hugepage"
#: Back ends looked up on PATH (virtiofsd has its own search, in pyvmm.vhost.virtiofsd).
PROGRAMS = ("qemu-storage-daemon", "passt")


@dataclass(frozen=True)
class HostFacts:
    """What was found; ``None`` or an error string where something could not be used."""

    kvm_path: str = "/dev/kvm"
    #: Why /dev/kvm could not be used (open, API version), or None.
    kvm_error: str | None = None
    #: Which of KVM_MODULES are loaded.
    kvm_modules: frozenset[str] = frozenset()
    #: vmx / svm, if the CPU (as this kernel sees it) has them.
    cpu_virtualization: frozenset[str] = frozenset()
    #: The KVM capabilities pyvmm needs that this KVM lacks (empty when unknown).
    missing_kvm_capabilities: tuple[str, ...] = ()
    #: Device node -> None when it opened, else why not.
    devices: dict[str, str | None] = field(default_factory=dict)
    #: The virtiofsd pyvmm would start, or None; and why not.
    virtiofsd: str | None = None
    virtiofsd_error: str | None = None
    #: Program -> its path, or None.
    programs: dict[str, str | None] = field(default_factory=dict)
    #: Transparent huge pages: the chosen value of THP_SETTINGS/enabled (private guest
    #: RAM, which pyvmm advises) and of shmem_enabled (shared guest RAM, a memfd, for
    #: virtiofsd and qemu-storage-daemon); None where the kernel has no such file.
    thp_private: str | None = None
    thp_shared: str | None = None
    #: pyvmm may mount its own tmpfs with huge=always for shared RAM (as root), which
    #: gives it 2 MiB pages whatever shmem_enabled says but ``deny``.
    huge_tmpfs: bool = False
    #: The kernel command mode would take modules for (the running one, if /lib/modules
    #: has it), the modules it would load, and the wanted ones it would not find.
    kernel_release: str | None = None
    command_modules: tuple[str, ...] = ()
    missing_modules: tuple[str, ...] = ()


def gather() -> HostFacts:
    """Read this host's facts (opens /dev/kvm and the device nodes, closes them again)."""
    kvm_error, missing = _kvm()
    virtiofsd, virtiofsd_error = _virtiofsd()
    release, modules, missing_modules = _modules()
    return HostFacts(
        kvm_path=environment.KVM_DEVICE.get(),
        kvm_error=kvm_error,
        kvm_modules=frozenset(m for m in KVM_MODULES if os.path.isdir(f"/sys/module/{m}")),
        cpu_virtualization=_cpu_flags(),
        missing_kvm_capabilities=missing,
        devices={path: _open_error(path) for path in DEVICES},
        virtiofsd=virtiofsd, virtiofsd_error=virtiofsd_error,
        programs={name: shutil.which(name) for name in PROGRAMS},
        thp_private=_chosen(f"{THP_SETTINGS}/enabled"),
        thp_shared=_chosen(f"{THP_SETTINGS}/shmem_enabled"),
        huge_tmpfs=huge_tmpfs_possible(),
        kernel_release=release, command_modules=modules, missing_modules=missing_modules)


def _kvm() -> tuple[str | None, tuple[str, ...]]:
    try:
        kvm = kvm_system.Kvm()
    except PyvmmError as error:
        return str(error).removesuffix(SEE_CHECK), ()
    try:
        return None, tuple(name for name, capability in
                           kvm_system.REQUIRED_CAPABILITIES.items()
                           if not kvm.check_extension(capability))
    finally:
        kvm.close()


def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as stream:
            text = stream.read()
    except OSError:
        return frozenset()
    flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return frozenset(flags.group(1).split()) & {"vmx", "svm"} if flags else frozenset()


def _open_error(path: str) -> str | None:
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return "absent" if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
    return None


def _virtiofsd() -> tuple[str | None, str | None]:
    from pyvmm.vhost.virtiofsd import find_virtiofsd

    try:
        return find_virtiofsd().path, None
    except PyvmmError as error:
        return None, str(error).removesuffix(SEE_CHECK)


def _chosen(path: str) -> str | None:
    """The bracketed word of a sysfs choice such as ``always [madvise] never``."""
    try:
        with open(path) as stream:
            found = re.search(r"\[(\w+)\]", stream.read())
    except OSError:
        return None
    return found.group(1) if found else None


def _modules() -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """Command mode's modules for the running kernel, else the newest in /lib/modules."""
    release = platform.release()
    if not os.path.isdir(f"/lib/modules/{release}"):
        try:
            installed = sorted(os.listdir("/lib/modules"))
        except OSError:
            installed = []
        if not installed:
            return None, (), tuple(WANTED_MODULES)
        release = installed[-1]
    try:
        found = find_modules(f"/lib/modules/{release}", WANTED_MODULES)
    except PyvmmError:
        return release, (), tuple(WANTED_MODULES)
    return release, tuple(name for name, _ in found.files), found.missing
