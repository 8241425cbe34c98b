"""The KVM system fd (/dev/kvm): API version, capabilities, VM creation."""

from __future__ import annotations

import errno
import os

from pyvmm.errors import SEE_CHECK, HostError
from pyvmm.host import environment
from pyvmm.kvm._ffi import ffi, ioctl, ioctl_value, lib
from pyvmm.kvm.vm import Vm

#: Capabilities pyvmm relies on, and what each is for (named in the error).
REQUIRED_CAPABILITIES: dict[str, int] = {
    "KVM_CAP_USER_MEMORY": lib.KVM_CAP_USER_MEMORY,
    "KVM_CAP_IRQCHIP": lib.KVM_CAP_IRQCHIP,
    "KVM_CAP_HLT": lib.KVM_CAP_HLT,
    "KVM_CAP_SET_TSS_ADDR": lib.KVM_CAP_SET_TSS_ADDR,
    "KVM_CAP_EXT_CPUID": lib.KVM_CAP_EXT_CPUID,
    "KVM_CAP_PIT2": lib.KVM_CAP_PIT2,
    "KVM_CAP_IOEVENTFD": lib.KVM_CAP_IOEVENTFD,
    "KVM_CAP_IRQFD": lib.KVM_CAP_IRQFD,
    "KVM_CAP_IMMEDIATE_EXIT": lib.KVM_CAP_IMMEDIATE_EXIT,
    "KVM_CAP_MP_STATE": lib.KVM_CAP_MP_STATE,
}

#: Entries requested from KVM_GET_SUPPORTED_CPUID (doubled on E2BIG).
_CPUID_ENTRIES = 128

#: KVM_CHECK_EXTENSION's answers by (device path, capability), for ``check_extension``.
_CAPABILITIES: dict[tuple[str, int], int] = {}

#: A CPUID leaf as plain data: (function, index, flags, eax, ebx, ecx, edx).
CpuidTuple = tuple[int, int, int, int, int, int, int]


class Kvm:
    """An open /dev/kvm whose API version and capabilities were checked."""

    @staticmethod
    def device_path() -> str:
        """The KVM device node a ``Kvm()`` opens ($PYVMM_KVM_DEVICE, else /dev/kvm)."""
        return environment.KVM_DEVICE.get()

    def __init__(self, path: str | None = None) -> None:
        path = path or self.device_path()
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostError(
                f"{path} does not exist: load KVM (modprobe kvm_intel or kvm_amd) "
                f"and enable virtualization in the firmware{SEE_CHECK}") from None
        except PermissionError:
            raise HostError(
                f"cannot open {path}: permission denied; add your user to the "
                f"'kvm' group or run as root{SEE_CHECK}") from None
        except OSError as exc:
            raise HostError(f"cannot open {path}: {exc.strerror}") from None
        version = ioctl_value(self.fd, lib.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise HostError(
                f"{path} speaks KVM API version {version}, pyvmm needs {lib.KVM_API_VERSION}")

    def check_extension(self, capability: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value.

        The answer is the loaded KVM module's, so each is asked once per process
        and device (a machine's assembly asks some 30; a restore in the rig,
        where an ioctl is emulated, paid milliseconds for them).
        """
        key = (self.path, capability)
        value = _CAPABILITIES.get(key)
        if value is None:
            value = ioctl_value(self.fd, lib.KVM_CHECK_EXTENSION, capability,
                                "KVM_CHECK_EXTENSION")
            _CAPABILITIES[key] = value
        return value

    def has_tsc_deadline_timer(self) -> bool:
        """Whether the in-kernel LAPIC emulates TSC-deadline mode (userspace must say so in CPUID)."""
        return bool(self.check_extension(lib.KVM_CAP_TSC_DEADLINE_TIMER))

    def has_coalesced_pio(self) -> bool:
        """Whether port writes can be queued in the coalesced ring (``Vm.coalesce_pio``)."""
        return self.check_extension(lib.KVM_CAP_COALESCED_PIO) > 0

    def require_capabilities(self) -> None:
        """Raise HostError naming the first capability this host lacks."""
        for name, capability in REQUIRED_CAPABILITIES.items():
            if not self.check_extension(capability):
                raise HostError(
                    f"this host's KVM lacks {name}, which pyvmm needs; "
                    f"update the host kernel{SEE_CHECK}")

    def max_vcpus(self) -> int:
        """How many vCPUs one VM may have (KVM_CAP_MAX_VCPUS, else NR_VCPUS)."""
        return (self.check_extension(lib.KVM_CAP_MAX_VCPUS)
                or self.check_extension(lib.KVM_CAP_NR_VCPUS) or 4)

    def vcpu_mmap_size(self) -> int:
        """Size of each vCPU's shared kvm_run area."""
        return ioctl_value(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self) -> list[CpuidTuple]:
        """The CPUID leaves KVM can present to a guest on this host."""
        count = _CPUID_ENTRIES
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": count, "entries": count})
            ret = lib.pyvmm_ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
            if ret == -errno.E2BIG and count < 4096:
                count *= 2
                continue
            if ret < 0:
                ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID")
            return [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in cpuid.entries[0:cpuid.nent]]

    def create_vm(self) -> Vm:
        """KVM_CREATE_VM: a new, empty VM."""
        fd = ioctl_value(self.fd, lib.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return Vm(fd, self.vcpu_mmap_size())

    def close(self) -> None:
        os.close(self.fd)


#: Why a Linux guest can't reach user space on a kvm_pvm host, and where to run it instead:
#: said by every refusal (``pyvmm run``, command mode) and by ``pyvmm check``.
PVM_NO_USER_SPACE = ("/dev/kvm here is kvm_pvm (KVM without hardware virtualization), which "
                     "emulates a Linux guest in software and can't run its user space")
RUN_LINUX_ELSEWHERE = ("run it where KVM is hardware (VMX/SVM), or from a pyvmm checkout in "
                       "the rig: python3 scripts/rig.py -- pyvmm run ...")


def is_pvm_host() -> bool:
    """True when /dev/kvm is kvm_pvm, which emulates non-PVM guests in software."""
    return os.path.isdir("/sys/module/kvm_pvm")
