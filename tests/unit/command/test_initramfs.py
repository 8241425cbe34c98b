"""The newc cpio writer (read back by cpio(1)) and module load order from modules.dep."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from pyvmm.command.initramfs.build import device_modules, modules_for
from pyvmm.command.initramfs.cpio import CpioWriter
from pyvmm.command.initramfs.modules import find_modules, load_order, module_name, parse_modules_dep
from pyvmm.config.machine import MachineConfig
from pyvmm.config.network import NetConfig
from pyvmm.config.tables import DriveConfig
from pyvmm.loader.bzimage import kernel_release
from tests.host_kernels import debian_kernel


def test_header_layout_and_padding() -> None:
    writer = CpioWriter()
    writer.file("/init", b"abcde", 0o755)
    archive = writer.finish()
    assert archive[:6] == b"070701"
    fields = [int(archive[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == 0o100755 and fields[6] == 5 and fields[11] == len(b"init\0")
    # 110-byte header + "init\0" = 115, padded to 116; then the data, padded to 8.
    assert archive[110:116] == b"init\0\0"
    assert archive[116:124] == b"abcde\0\0\0"
    assert b"TRAILER!!!\0" in archive[124:]
    assert len(archive) % 4 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")
def test_cpio_reads_back_files_links_devices_and_a_concatenation(tmp_path) -> None:
    first = CpioWriter()
    first.directory("bin")
    first.file("bin/tool", bytes(range(256)) * 3, 0o755)
    first.symlink("bin/sh", "tool")
    first.char_device("dev/console", 5, 1)
    second = CpioWriter()
    second.file("job.sh", b"echo hi\n")
    archive = tmp_path / "a.cpio"
    archive.write_bytes(first.finish() + second.finish())
    listing = subprocess.run(["cpio", "-itv", "--quiet", "-F", str(archive)],
                             capture_output=True, text=True, check=True).stdout
    assert "bin/tool" in listing and "bin/sh -> tool" in listing
    assert "5,   1" in listing or "5, 1" in listing
    out = tmp_path / "out"
    out.mkdir()
    for start in (0, len(first.finish())):  # the kernel unpacks both archives; cpio one at a time
        with open(archive, "rb") as stream:
            stream.seek(start)
            subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], stdin=stream,
                           cwd=out, check=True)
    assert (out / "bin/tool").read_bytes() == bytes(range(256)) * 3
    assert os.stat(out / "bin/tool").st_mode & 0o777 == 0o755
    assert os.readlink(out / "bin/sh") == "tool"
    assert (out / "job.sh").read_bytes() == b"echo hi\n"


DEP = """\
kernel/fs/fuse/virtiofs.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/fuse/fuse.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/char/hw_random/rng-core.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/rng-core.ko:
"""


def test_dependencies_load_first_and_each_module_once() -> None:
    deps = parse_modules_dep(DEP)
    order, missing = load_order(["virtio_mmio", "virtiofs", "virtio-console", "overlay"], deps,
                                builtin={"overlay"})
    names = [module_name(path) for path in order]
    assert names == ["virtio_ring", "virtio", "virtio_mmio", "fuse", "virtiofs",
                     "virtio_console"]
    assert missing == []
    # A dependency listed before its own dependency is still loaded after it.
    deps["kernel/x.ko"] = ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"]
    order, _ = load_order(["x"], deps, set())
    assert [module_name(p) for p in order] == ["virtio_ring", "virtio", "x"]
    assert load_order(["nothere"], deps, set()) == ([], ["nothere"])


def test_find_modules_in_a_directory(tmp_path) -> None:
    (tmp_path / "modules.dep").write_text(DEP)
    (tmp_path / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    found = find_modules(str(tmp_path), ["virtiofs", "overlay", "9p"])
    assert [name for name, _ in found.files] == ["virtio_ring.ko", "virtio.ko", "fuse.ko",
                                                 "virtiofs.ko"]
    assert found.files[-1][1] == str(tmp_path / "kernel/fs/fuse/virtiofs.ko.xz")
    assert found.missing == ("9p",)


def test_the_guests_devices_bring_their_drivers(tmp_path) -> None:
    (tmp_path / "modules.dep").write_text(DEP)
    plain = MachineConfig(kernel="k")
    assert device_modules(plain) == []
    assert device_modules(MachineConfig(kernel="k", nets=(NetConfig(type="none"),))) == []
    assert device_modules(MachineConfig(kernel="k", nets=(NetConfig(type="user"),))) == [
        "virtio_net"]
    assert device_modules(MachineConfig(kernel="k", vsock=3)) == ["vmw_vsock_virtio_transport"]
    assert device_modules(MachineConfig(kernel="k", vsock_auto=True)) == [
        "vmw_vsock_virtio_transport"]
    both = MachineConfig(kernel="k", drives=(DriveConfig(path="disk.img"),), rng=True)
    found = modules_for(b"", str(tmp_path), device_modules(both))
    assert found is not None
    names = [name for name, _ in found.files]
    # Command mode's own first, then each device's driver after what it needs.
    assert names[names.index("virtiofs.ko"):] == [
        "virtiofs.ko", "virtio_blk.ko", "rng_core.ko", "virtio_rng.ko"]


def test_kernel_release_from_a_bzimage_header() -> None:
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x100)
    image[0x300:0x330] = b"6.1.0-56-amd64 (debian-kernel@lists) #1 SMP\0".ljust(0x30, b"\0")
    assert kernel_release(bytes(image)) == "6.1.0-56-amd64"
    assert kernel_release(b"\x7fELF" + bytes(0x400)) is None


@pytest.mark.skipif(debian_kernel() is None, reason="Debian's kernel is not installed")
def test_kernel_release_of_debians_kernel() -> None:
    path = debian_kernel()
    assert path is not None
    with open(path, "rb") as stream:
        assert kernel_release(stream.read(0x10000)) == path.name.removeprefix("vmlinuz-")


@pytest.mark.skipif(not os.path.isfile("/bin/busybox"), reason="busybox is not installed")
def test_the_base_archive_is_cached_privately_and_reused(tmp_path, monkeypatch) -> None:
    from pyvmm.command.initramfs.build import base_archive

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("PYVMM_BUSYBOX", raising=False)
    (tmp_path / "mods").mkdir()
    module = tmp_path / "mods" / "fuse.ko"
    module.write_bytes(b"\x7fELF fuse")
    from pyvmm.command.initramfs.modules import ModuleSet

    modules = ModuleSet(str(tmp_path / "mods"), (("fuse.ko", str(module)),), ())
    first = base_archive(modules)
    (entry,) = (tmp_path / "pyvmm").iterdir()
    assert os.stat(tmp_path / "pyvmm").st_mode & 0o777 == 0o700
    assert os.stat(entry).st_mode & 0o777 == 0o600
    assert entry.read_bytes() == first
    assert b"modules/order" in first and b"fuse.ko\n" in first and b"\x7fELF fuse" in first
    assert base_archive(modules) == first
    module.write_bytes(b"\x7fELF fuse, rebuilt")  # a changed module is a new cache entry
    assert b"rebuilt" in base_archive(modules)
    assert len(list((tmp_path / "pyvmm").iterdir())) == 2


def test_a_dynamic_busybox_is_refused(tmp_path, monkeypatch) -> None:
    from pyvmm.errors import ConfigError
    from pyvmm.command.initramfs.build import base_archive

    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF" + b"\0" * 100 + b"/lib64/ld-linux-x86-64.so.2")
    monkeypatch.setenv("PYVMM_BUSYBOX", str(fake))
    with pytest.raises(ConfigError, match="busybox-static"):
        base_archive(None)
