"""Tests that need a real Linux user space, so hardware-assisted KVM.

Everything under tests/linux/ is marked ``linux``.  Where ``/dev/kvm`` is
kvm_pvm (which can't run Linux user space) or absent, these tests skip here
with the reason; ``scripts/test.sh`` runs them inside ``scripts/rig.py``,
where ``/dev/kvm`` is SVM KVM under QEMU's TCG.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvmm.kvm.system import is_pvm_host
from tests.host_kernels import debian_kernel

HERE = Path(__file__).resolve().parent
#: The kernels command-mode guests boot: our minimal kernel (virtio-fs built in) and
#: Debian's stock one (virtio-fs, FUSE, overlay and virtio-mmio as modules from
#: /lib/modules).  PYVMM_COMMAND_KERNELS=minimal or =debian runs one of them.
KERNELS = {
    "minimal": HERE.parents[1] / "images" / "out" / "linux" / "bzImage",
    "debian": debian_kernel() or Path("/boot/vmlinuz-none"),
}


@pytest.fixture(params=[name for name in KERNELS
                        if os.environ.get("PYVMM_COMMAND_KERNELS", name) in (name, "all")])
def kernel(request: pytest.FixtureRequest) -> str:
    """Each kernel a command-mode test runs its command under."""
    path = KERNELS[request.param]
    if not path.exists():
        pytest.skip(f"{path} is not there")
    return str(path)


def why_no_hardware_kvm() -> str | None:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        return f"/dev/kvm is not usable here ({exc.strerror}): run through scripts/rig.py"
    if is_pvm_host():
        return ("/dev/kvm is kvm_pvm, which runs no Linux user space: "
                "run through scripts/rig.py (scripts/test.sh does)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = why_no_hardware_kvm()
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.linux)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
