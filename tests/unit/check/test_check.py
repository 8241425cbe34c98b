"""``pyvmm check`` judging made-up hosts: each capability present and absent."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from pyvmm.check.capabilities import judge, linux_runs
from pyvmm.check.facts import HostFacts
from pyvmm.cli.main import main

#: A host where everything is there: Intel VMX, every device, back end and module.
GOOD = HostFacts(
    kvm_modules=frozenset({"kvm_intel"}), cpu_virtualization=frozenset({"vmx"}),
    devices={"/dev/vhost-net": None, "/dev/vhost-vsock": None, "/dev/net/tun": None},
    virtiofsd="/usr/libexec/virtiofsd",
    programs={"qemu-storage-daemon": "/usr/bin/qemu-storage-daemon", "passt": "/usr/bin/passt"},
    thp_private="madvise", thp_shared="advise",
    kernel_release="6.1.0-57-amd64", command_modules=("virtio_mmio.ko", "fuse.ko"))


def by_name(facts: HostFacts) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.line()) for c in judge(facts)}


def test_everything_present() -> None:
    found = judge(GOOD)
    assert all(c.ok for c in found) and linux_runs(found)
    lines = [c.line() for c in found]
    assert lines[:3] == ["ok      /dev/kvm: opens read-write, KVM API 12",
                         "ok      hardware virtualization: VMX (kvm_intel)",
                         "ok      KVM capabilities: all 10 pyvmm needs"]
    assert "ok      huge pages: /sys/kernel/mm/transparent_hugepage/enabled is madvise, " \
        "shmem_enabled is advise: 2 MiB pages for guest RAM" in lines
    assert "ok      command mode modules: for 6.1.0-57-amd64: loads virtio_mmio fuse" in lines


def test_shared_ram_on_its_own_tmpfs_needs_no_shmem_setting() -> None:
    facts = dataclasses.replace(GOOD, thp_shared="never", huge_tmpfs=True)
    assert by_name(facts)["huge pages"] == (True, (
        "ok      huge pages: /sys/kernel/mm/transparent_hugepage/enabled is madvise, "
        "shmem_enabled is never (shared RAM on pyvmm's own huge=always tmpfs): 2 MiB "
        "pages for guest RAM"))
    facts = dataclasses.replace(facts, thp_shared="deny")  # it overrides every mount
    assert by_name(facts)["huge pages"][0] is False


def test_svm_is_hardware_too() -> None:
    facts = dataclasses.replace(GOOD, kvm_modules=frozenset({"kvm_amd"}),
                                cpu_virtualization=frozenset({"svm"}))
    assert by_name(facts)["hardware virtualization"] == (
        True, "ok      hardware virtualization: SVM (kvm_amd)")


# Each capability absent: (the facts that take it away, its name, words its line must
# have: why and how), and whether a Linux guest still runs.
ABSENT = [
    (dict(kvm_error="/dev/kvm does not exist: load KVM"), "/dev/kvm",
     ["does not exist", "modprobe kvm_intel"], False),
    (dict(kvm_error="cannot open /dev/kvm: permission denied; add ..."), "/dev/kvm",
     ["permission denied", "'kvm' group"], False),
    (dict(kvm_modules=frozenset({"kvm_pvm"})), "hardware virtualization",
     ["kvm_pvm", "can't run its user space", "scripts/rig.py"], False),
    (dict(kvm_modules=frozenset(), cpu_virtualization=frozenset({"svm"})),
     "hardware virtualization", ["CPU has SVM", "modprobe kvm_amd"], False),
    (dict(kvm_modules=frozenset(), cpu_virtualization=frozenset()), "hardware virtualization",
     ["neither VMX nor SVM", "firmware"], False),
    (dict(missing_kvm_capabilities=("KVM_CAP_IRQFD",)), "KVM capabilities",
     ["lacks KVM_CAP_IRQFD", "newer host kernel"], False),
    (dict(devices={"/dev/vhost-net": "absent", "/dev/vhost-vsock": None, "/dev/net/tun": None}),
     "vhost-net", ["/dev/vhost-net: absent", "modprobe vhost_net"], True),
    (dict(devices={"/dev/vhost-net": None, "/dev/vhost-vsock": "absent", "/dev/net/tun": None}),
     "vhost-vsock", ["absent", "modprobe vhost_vsock"], True),
    (dict(devices={"/dev/vhost-net": None, "/dev/vhost-vsock": None,
                   "/dev/net/tun": "Permission denied"}),
     "/dev/net/tun", ["Permission denied", "run as root"], True),
    (dict(virtiofsd=None, virtiofsd_error="no virtiofsd found: install Debian's "
          "qemu-system-common"), "virtiofsd", ["no virtiofsd found", "qemu-system-common",
                                                "command mode"], True),
    (dict(programs={"qemu-storage-daemon": None, "passt": "/usr/bin/passt"}),
     "qemu-storage-daemon", ["not on PATH", "apt-get install qemu-system-common"], True),
    (dict(programs={"qemu-storage-daemon": "/usr/bin/qsd", "passt": None}),
     "passt", ["not on PATH", "apt-get install passt"], True),
    (dict(thp_private=None, thp_shared=None), "huge pages",
     ["no transparent huge pages", "CONFIG_TRANSPARENT_HUGEPAGE"], True),
    (dict(thp_private="never"), "huge pages",
     ["enabled is never", "4 KiB pages",
      "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"], True),
    (dict(thp_shared="never"), "huge pages",  # Debian's default
     ["shmem_enabled is never", "qemu-storage-daemon", "4 KiB pages",
      "run pyvmm as root", "echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled"],
     True),
    (dict(missing_modules=("virtiofs",)), "command mode modules",
     ["not found: virtiofs", "--modules DIR"], True),
    (dict(kernel_release=None), "command mode modules",
     ["no kernel in /lib/modules", "linux-image-amd64"], True),
]


@pytest.mark.parametrize("changes, name, words, runs", ABSENT,
                         ids=[f"{case[1]}-{i}" for i, case in enumerate(ABSENT)])
def test_each_capability_absent(changes, name, words, runs) -> None:
    facts = dataclasses.replace(GOOD, **changes)
    found = judge(facts)
    ok, line = {c.name: (c.ok, c.line()) for c in found}[name]
    assert not ok and line.startswith(f"missing {name}: ")
    assert "; to get it: " in line
    for word in words:
        assert word in line
    assert linux_runs(found) is runs
    assert [c.name for c in found if not c.ok][0] == name


def test_cli_lines_json_and_status(monkeypatch) -> None:
    facts = [GOOD]
    monkeypatch.setattr("pyvmm.cli.check.gather", lambda: facts[0])
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == len(judge(GOOD)) + 1 and lines[-1] == "pyvmm check: Linux guests run here"
    facts[0] = dataclasses.replace(GOOD, kvm_modules=frozenset({"kvm_pvm"}))
    result = CliRunner().invoke(main, ["check", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["linux_guests"] is False
    hardware = report["capabilities"][1]
    assert hardware["name"] == "hardware virtualization" and hardware["ok"] is False
    assert hardware["required"] is True and "scripts/rig.py" in hardware["how"]


def test_gathered_facts_of_a_host_without_kvm(monkeypatch, tmp_path) -> None:
    """The real gathering, with /dev/kvm pointed at nothing: the error, without the
    "(see pyvmm check)" every other command adds to it."""
    from pyvmm.check.facts import gather

    monkeypatch.setenv("PYVMM_KVM_DEVICE", str(tmp_path / "kvm"))
    facts = gather()
    assert facts.kvm_path == str(tmp_path / "kvm")
    assert facts.kvm_error is not None and facts.kvm_error.startswith(f"{tmp_path}/kvm does not")
    assert "pyvmm check" not in facts.kvm_error
    found = judge(facts)
    assert not linux_runs(found)
    assert [c.name for c in found if c.required and not c.ok][0] == str(tmp_path / "kvm")
