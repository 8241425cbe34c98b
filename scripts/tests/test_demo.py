"""scripts/demo.py without booting: the kernel it picks, the initramfs it builds, where it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyvmm.check.facts import HostFacts
from script_module import load_script


def test_the_newest_kernel_with_modules_is_chosen(tmp_path: Path) -> None:
    demo = load_script("demo")
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for release in ("6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-amd64"):
        (boot / f"vmlinuz-{release}").write_bytes(b"")
    for release in ("6.1.0-9-amd64", "6.1.0-56-amd64"):  # 6.1.0-60 has no modules
        (modules / release).mkdir(parents=True)
        (modules / release / "modules.dep").write_text("")
    assert demo.debian_kernel(boot, modules) == "6.1.0-56-amd64"
    with pytest.raises(SystemExit, match="apt-get install linux-image-amd64"):
        demo.debian_kernel(boot, tmp_path / "none")


def fake_modules(root: Path) -> str:
    release = "6.1.0-0-test"
    directory = root / "lib" / "modules" / release
    (directory / "kernel").mkdir(parents=True)
    for name in ("virtio", "virtio_mmio", "virtio_console"):
        (directory / "kernel" / f"{name}.ko").write_bytes(f"module {name}".encode())
    (directory / "modules.dep").write_text("kernel/virtio.ko:\n"
                                           "kernel/virtio_mmio.ko: kernel/virtio.ko\n"
                                           "kernel/virtio_console.ko: kernel/virtio.ko\n")
    (directory / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\n")
    return release


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio(1) to read the archive back")
def test_the_initramfs_has_busybox_init_and_modules_in_load_order(tmp_path: Path,
                                                                  monkeypatch) -> None:
    demo = load_script("demo")
    release = fake_modules(tmp_path)
    real_find = demo.find_modules
    monkeypatch.setattr(demo, "find_modules", lambda directory, wanted: real_find(
        str(tmp_path) + directory, wanted))
    monkeypatch.setattr(demo, "OUT", tmp_path / "out")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    path = demo.build_initramfs(release, busybox)
    assert path == tmp_path / "out" / f"initramfs-{release}.cpio"
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], cwd=unpacked,
                   stdin=path.open("rb"), check=True)
    assert (unpacked / "bin" / "busybox").read_bytes() == b"\x7fELF busybox"
    assert (unpacked / "init").read_bytes() == demo.INIT.read_bytes()
    assert os.access(unpacked / "init", os.X_OK)
    assert (unpacked / "lib/modules/load-order").read_text().split() == [
        "virtio.ko", "virtio_mmio.ko", "virtio_console.ko"]  # virtio_blk is built in
    assert (unpacked / "lib/modules/virtio_mmio.ko").read_bytes() == b"module virtio_mmio"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize("facts, why", [
    (HostFacts(kvm_modules=frozenset({"kvm_amd"})), None),
    (HostFacts(kvm_modules=frozenset({"kvm_pvm"})),
     "/dev/kvm here is kvm_pvm (KVM without hardware virtualization); "),
    (HostFacts(kvm_error="/dev/kvm does not exist: load KVM"), "/dev/kvm does not exist; "),
])
def test_the_demo_runs_in_the_rig_only_without_hardware_kvm(monkeypatch, tmp_path, capsys,
                                                            facts, why) -> None:
    demo = load_script("demo")
    monkeypatch.setattr(demo, "gather", lambda: facts)
    monkeypatch.setattr(demo, "debian_kernel", lambda: "6.1.0-57-amd64")
    monkeypatch.setattr(demo, "build_initramfs", lambda release: tmp_path / "initrd.cpio")
    assert demo.main(["--dry-run"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("demo: building the guest's initramfs in Python")
    assert err[1].startswith("demo: building the guest's initramfs in Python") and \
        err[1].endswith(" s")
    command = err[-1]
    assert command.startswith("demo: $ ")
    assert "run --kernel /boot/vmlinuz-6.1.0-57-amd64 --initrd " in command
    assert "pyvmm.run=uname,-a" in command
    if why:
        assert len(err) == 4  # one line says why the rig, before it starts
        assert err[2].startswith(f"demo: {why}the demo runs in the rig instead")
        assert "scripts/rig.py -- " in command
    else:
        assert len(err) == 3 and "rig.py" not in command
