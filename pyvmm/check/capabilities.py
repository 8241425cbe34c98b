"""Judge ``HostFacts``: one ``Capability`` per thing pyvmm may use, ok or missing, and why.

Only the first three decide whether a Linux guest runs here (``linux_runs``):
a usable /dev/kvm, hardware virtualization behind it, and the KVM
capabilities pyvmm needs.  The rest say which features will work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pyvmm.check.facts import THP_SETTINGS, HostFacts
from pyvmm.kvm.system import PVM_NO_USER_SPACE, REQUIRED_CAPABILITIES, RUN_LINUX_ELSEWHERE

#: How to get a vendor's KVM module loaded.
_MODULE_OF = {"vmx": "kvm_intel", "svm": "kvm_amd"}


@dataclass(frozen=True)
class Capability:
    """One line of ``pyvmm check``: what, ok or not, what was found or why not, how to get it."""

    name: str
    ok: bool
    detail: str
    how: str = ""
    #: A Linux guest can't run without it.
    required: bool = False

    def line(self) -> str:
        status = "ok" if self.ok else "missing"
        text = f"{status:<8}{self.name}: {self.detail}"
        return text + (f"; to get it: {self.how}" if self.how and not self.ok else "")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def judge(facts: HostFacts) -> list[Capability]:
    """Every capability, required ones first."""
    return [_kvm_device(facts), _hardware(facts), _kvm_capabilities(facts),
            *_devices(facts), _virtiofsd(facts), *_programs(facts), _hugepages(facts),
            _command_modules(facts)]


def linux_runs(capabilities: list[Capability]) -> bool:
    """Whether a Linux guest reaches user space here: every required capability is ok."""
    return all(c.ok for c in capabilities if c.required)


def _kvm_device(facts: HostFacts) -> Capability:
    name = facts.kvm_path
    if facts.kvm_error is None:
        return Capability(name, True, "opens read-write, KVM API 12", required=True)
    if "permission denied" in facts.kvm_error:
        how = "add your user to the 'kvm' group (then log in again), or run as root"
    elif facts.cpu_virtualization:
        flag = sorted(facts.cpu_virtualization)[0]
        how = f"modprobe {_MODULE_OF[flag]}"
    else:
        how = ("a CPU with VMX or SVM enabled in the firmware (or a cloud VM with nested "
               "virtualization), then modprobe kvm_intel or kvm_amd")
    return Capability(name, False, facts.kvm_error, how, required=True)


def _hardware(facts: HostFacts) -> Capability:
    name = "hardware virtualization"
    if "kvm_pvm" in facts.kvm_modules:
        return Capability(name, False, PVM_NO_USER_SPACE, RUN_LINUX_ELSEWHERE, required=True)
    for module, what in (("kvm_intel", "VMX (kvm_intel)"), ("kvm_amd", "SVM (kvm_amd)")):
        if module in facts.kvm_modules:
            return Capability(name, True, what, required=True)
    if facts.cpu_virtualization:
        flag = sorted(facts.cpu_virtualization)[0]
        return Capability(name, False, f"the CPU has {flag.upper()} but no KVM module for it "
                          "is loaded", f"modprobe {_MODULE_OF[flag]}", required=True)
    return Capability(name, False, "no KVM vendor module loaded and the CPU shows neither "
                      "VMX nor SVM", "enable virtualization in the firmware, or nested "
                      "virtualization for a VM", required=True)


def _kvm_capabilities(facts: HostFacts) -> Capability:
    name = "KVM capabilities"
    if facts.kvm_error is not None:
        return Capability(name, False, f"not checked: {facts.kvm_path} is not usable",
                          f"make {facts.kvm_path} usable (above)", required=True)
    if facts.missing_kvm_capabilities:
        return Capability(name, False, "this KVM lacks " + ", ".join(
            facts.missing_kvm_capabilities), "a newer host kernel", required=True)
    return Capability(name, True, f"all {len(REQUIRED_CAPABILITIES)} pyvmm needs",
                      required=True)


def _devices(facts: HostFacts) -> list[Capability]:
    about = {"/dev/vhost-net": ("vhost-net", "virtio-net served in the host kernel",
                                "modprobe vhost_net"),
             "/dev/vhost-vsock": ("vhost-vsock", "virtio-vsock served in the host kernel",
                                  "modprobe vhost_vsock"),
             "/dev/net/tun": ("/dev/net/tun", "tap devices for guest networking",
                              "modprobe tun")}
    found = []
    for path, error in facts.devices.items():
        name, use, how = about.get(path, (path, "", ""))
        if error is None:
            found.append(Capability(name, True, f"{path} opens ({use})"))
        else:
            if error != "absent":
                how = "run as root, or get access to it from its owner"
            found.append(Capability(name, False, f"{path}: {error} (for {use})", how))
    return found


def _virtiofsd(facts: HostFacts) -> Capability:
    if facts.virtiofsd:
        return Capability("virtiofsd", True, f"{facts.virtiofsd} (--share, command mode)")
    why, _, how = (facts.virtiofsd_error or "no virtiofsd found").partition(": ")
    return Capability("virtiofsd", False, f"{why} (--share and command mode need it)",
                      how or "apt-get install qemu-system-common")


def _programs(facts: HostFacts) -> list[Capability]:
    about = {"qemu-storage-daemon": ("disk back end: qcow2 and other formats, snapshot=on",
                                     "apt-get install qemu-system-common"),
             "passt": ("user-mode networking back end", "apt-get install passt")}
    found = []
    for name, path in facts.programs.items():
        use, how = about.get(name, ("", f"install {name}"))
        if path:
            found.append(Capability(name, True, f"{path} ({use})"))
        else:
            found.append(Capability(name, False, f"not on PATH (the {use})", how))
    return found


def _hugepages(facts: HostFacts) -> Capability:
    """Transparent huge pages behind guest RAM: with them KVM maps the guest in 2 MiB
    pages (far fewer nested page faults, which cost most where KVM is itself nested).
    pyvmm advises them for private RAM; RAM shared with the vhost-user back ends lives
    on its own huge=always tmpfs where it may mount one (root), else in a memfd, which
    Debian's default shmem_enabled (``never``) keeps in 4 KiB pages."""
    name = "huge pages"
    settings = f"{THP_SETTINGS}/enabled is {facts.thp_private}, shmem_enabled is " \
        f"{facts.thp_shared}"
    if facts.thp_private is None:
        return Capability(name, False, "this kernel has no transparent huge pages (guest "
                          "RAM in 4 KiB pages)", "a kernel with CONFIG_TRANSPARENT_HUGEPAGE")
    if facts.thp_private == "never":
        return Capability(name, False, f"{settings}: guest RAM in 4 KiB pages",
                          f"echo madvise > {THP_SETTINGS}/enabled (as root)")
    by_setting = facts.thp_shared in ("always", "within_size", "advise", "force")
    if not by_setting and not (facts.huge_tmpfs and facts.thp_shared != "deny"):
        return Capability(name, False, f"{settings}: RAM shared with virtiofsd or "
                          "qemu-storage-daemon (--share and command mode; qcow2 and "
                          "snapshot=on disks) in 4 KiB pages",
                          "run pyvmm as root (it mounts its own huge=always tmpfs for that "
                          f"RAM), or echo advise > {THP_SETTINGS}/shmem_enabled (as root)")
    where = "" if by_setting else " (shared RAM on pyvmm's own huge=always tmpfs)"
    return Capability(name, True, f"{settings}{where}: 2 MiB pages for guest RAM")


def _command_modules(facts: HostFacts) -> Capability:
    name = "command mode modules"
    if facts.kernel_release is None:
        return Capability(name, False, "no kernel in /lib/modules",
                          "apt-get install linux-image-amd64, or give pyvmm run --modules DIR")
    where = f"for {facts.kernel_release}"
    if facts.missing_modules:
        return Capability(name, False, f"{where}, not found: {', '.join(facts.missing_modules)}",
                          "a kernel with them (Debian's linux-image-amd64), or --modules DIR")
    loads = " ".join(m.removesuffix(".ko") for m in facts.command_modules) or "none"
    return Capability(name, True, f"{where}: loads {loads}")
