"""Which drives qemu-storage-daemon serves: format by magic, the drive options, their
mapping onto the daemon's QMP arguments, and the vhost-user-blk config space; no VM."""

from __future__ import annotations

import shutil
import struct
import tempfile

import pytest

from pyvmm.config.machine import config_from_options
from pyvmm.config.tables import DriveConfig, parse_drive
from pyvmm.devices.virtio.vhost_user import BLOCK_FEATURES, VhostBlockDevice
from pyvmm.errors import ConfigError, DeviceError
from pyvmm.host.image_format import detect_format, format_of_header
from pyvmm.vhost.storage_daemon import DaemonDrive, export_options, image_options
from pyvmm.vmm.disks import Disks, plan_drive, without_zero_size_max

#: Real headers' first bytes: qcow2 v2 and v3 (magic, version, backing file offset).
QCOW2_V2 = b"QFI\xfb" + struct.pack(">IQ", 2, 0) + bytes(52)
QCOW2_V3 = b"QFI\xfb" + struct.pack(">IQ", 3, 0) + bytes(52)


@pytest.mark.parametrize("header, expected", [
    (QCOW2_V2, "qcow2"), (QCOW2_V3, "qcow2"), (b"QED\0" + bytes(60), "qed"),
    (b"KDMV" + bytes(60), "vmdk"), (b"# Disk DescriptorFile\n", "vmdk"),
    (b"vhdxfile" + bytes(56), "vhdx"), (bytes(0x40) + b"\x7f\x10\xda\xbe", "vdi"),
    (b"conectix" + bytes(56), "vpc"), (bytes(512), "raw"), (b"QFI", "raw"),
    (b"\xeb\x63\x90" + bytes(509), "raw"),  # an MBR boot sector
    (b"", "raw")])
def test_the_magic_decides_the_format(header: bytes, expected: str) -> None:
    assert format_of_header(header) == expected


def image(tmp_path, data: bytes, name: str = "disk.img") -> str:
    path = tmp_path / name
    path.write_bytes(data + bytes(4096))
    return str(path)


def test_a_qcow2_is_never_served_raw(tmp_path) -> None:
    for header in (QCOW2_V2, QCOW2_V3):
        path = image(tmp_path, header)
        assert detect_format(path) == "qcow2"
        plan = plan_drive(DriveConfig(path))
        assert (plan.format, plan.daemon) == ("qcow2", True)
    with pytest.raises(ConfigError, match="backend=pyvmm serves raw images only, not a qcow2"):
        plan_drive(DriveConfig(path, backend="pyvmm"))


def test_a_raw_image_that_starts_with_the_magic_is_raw_when_told(tmp_path) -> None:
    path = image(tmp_path, QCOW2_V3)
    plan = plan_drive(parse_drive(f"path={path},format=raw"))
    assert (plan.format, plan.daemon) == ("raw", False)  # in-process, as any raw disk


def test_raw_stays_in_process_unless_something_needs_the_daemon(tmp_path) -> None:
    path = image(tmp_path, bytes(512))
    assert not plan_drive(DriveConfig(path)).daemon
    assert plan_drive(DriveConfig(path, backend="qsd")).daemon
    assert plan_drive(DriveConfig(path, snapshot=True)).daemon
    assert plan_drive(DriveConfig(path, overlay=str(tmp_path / "o.qcow2"))).daemon
    # A read-only disk is never written: no overlay, no daemon.
    assert not plan_drive(DriveConfig(path, readonly=True, snapshot=True)).daemon


def test_what_the_daemon_cant_do_is_one_line(tmp_path) -> None:
    path = image(tmp_path, QCOW2_V2)
    with pytest.raises(ConfigError, match="serial= is for disks pyvmm serves"):
        plan_drive(DriveConfig(path, serial="disk-1"))
    with pytest.raises(ConfigError, match="not snapshot=on"):
        plan_drive(DriveConfig(image(tmp_path, b"", "raw.img"), snapshot=True, backend="pyvmm"))
    with pytest.raises(ConfigError, match="overlay=.* exists"):
        plan_drive(DriveConfig(path, overlay=path))
    with pytest.raises(DeviceError, match="not found"):
        plan_drive(DriveConfig(str(tmp_path / "missing.qcow2")))


def test_the_drive_options_in_every_front_end(tmp_path) -> None:
    drive = parse_drive("path=a.qcow2,format=qcow2,snapshot=on,overlay=o.qcow2,backend=qsd")
    assert (drive.format, drive.snapshot, drive.overlay, drive.backend) == \
        ("qcow2", True, "o.qcow2", "qsd")
    with pytest.raises(ConfigError, match="format=qcow3"):
        parse_drive("path=a.img,format=qcow3")
    config = config_from_options(kernel="k", drives=["a.img", {"path": "b.img", "readonly": True},
                                                     "c.img,snapshot=off"], snapshot=True)
    # --snapshot: every writable drive, as QEMU's -snapshot.
    assert [d.snapshot for d in config.drives] == [True, False, True]


def test_drive_options_map_onto_the_daemons_arguments(tmp_path) -> None:
    path = image(tmp_path, QCOW2_V3)
    plain = image_options(DaemonDrive(path, "qcow2", direct=True), "drive0")
    assert plain == {"driver": "qcow2", "node-name": "drive0", "read-only": False,
                     "discard": "unmap", "cache": {"direct": True},
                     "file": {"driver": "file", "filename": path, "read-only": False}}
    readonly = DaemonDrive(path, "qcow2", readonly=True)
    assert image_options(readonly, "drive0")["read-only"] is True
    assert export_options(readonly, "drive0", "export0", "/d/vd0.sock") == {
        "type": "vhost-user-blk", "id": "export0", "node-name": "drive0",
        "addr": {"type": "unix", "path": "/d/vd0.sock"}, "writable": False}
    # Under an overlay the image itself is opened read-only: it never changes.
    under = DaemonDrive(path, "raw", overlay=str(tmp_path / "o.qcow2"))
    assert image_options(under, "base0")["file"]["read-only"] is True
    assert export_options(under, "drive0", "export0", "/s")["writable"] is True


class FakeBackend:
    def start(self, features, regions, vrings, backend_features) -> None: ...

    def get_vring_base(self, index: int) -> int:
        return 0


def test_the_config_space_is_the_daemons() -> None:
    # capacity 2048 sectors, size_max 0, seg_max 126, geometry, blk_size 4096, ..., num_queues 4
    config = struct.pack("<QIIHBBI", 2048, 0, 126, 0, 0, 0, 4096) + bytes(12) \
        + struct.pack("<H", 4) + bytes(24)
    device = VhostBlockDevice(FakeBackend(), (1 << 32) | (1 << 12) | (1 << 11) | (1 << 6)
                              | (1 << 2), config, lambda why: None)
    try:
        assert device.capacity == 2048
        seen = device.config_space()
        assert struct.unpack_from("<QII", seen) == (2048, 0, 126)
        assert struct.unpack_from("<I", seen, 20)[0] == 4096
        assert struct.unpack_from("<H", seen, 34)[0] == 1  # one queue, whatever it has
        # MQ (12) and CONFIG_WCE (11) are not offered on; blk_size and seg_max are.
        assert device.device_features() == (1 << 32) | (1 << 6) | (1 << 2)
        assert not device.device_features() & ~((1 << 32) | BLOCK_FEATURES | (1 << 28)
                                               | (1 << 29))
    finally:
        device.close()


def test_a_size_max_of_zero_is_not_offered() -> None:
    """QEMU 7.2's export says SIZE_MAX with size_max 0: Linux would then use 4 KiB buffers."""
    seg_max_too = (1 << 32) | (1 << 2) | (1 << 1)
    zero = struct.pack("<QII", 2048, 0, 126)
    assert without_zero_size_max(seg_max_too, zero) == (1 << 32) | (1 << 2)
    bounded = struct.pack("<QII", 2048, 65536, 126)
    assert without_zero_size_max(seg_max_too, bounded) == seg_max_too


@pytest.mark.skipif(shutil.which("qemu-storage-daemon") is None, reason="no qemu-storage-daemon")
def test_a_reboot_keeps_the_daemon_and_its_overlay(tmp_path, monkeypatch) -> None:
    """The machine built after a guest reboot connects to the same exports: the same
    daemon, the same throwaway overlay (holding what the guest wrote), until close."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read once, then cached
    disks = Disks([DriveConfig(image(tmp_path, bytes(1 << 20), "base.raw"), snapshot=True)])
    try:
        disks.start()
        assert disks.daemon is not None
        daemon = disks.daemon.process.pid
        (directory,) = [p for p in tmp_path.iterdir() if p.name.startswith("pyvmm-qsd-")]
        overlay = directory / "overlay0.qcow2"
        first = disks.backend(0)[0]
        assert overlay.read_bytes()[:4] == b"QFI\xfb"
        disks.disconnect()  # the machine is closed: its connections go, nothing else
        assert first.fileno() == -1 and overlay.exists()
        disks.start()  # the next machine
        frontend, features, config = disks.backend(0)
        assert disks.daemon.process.pid == daemon and frontend is not first
        assert struct.unpack_from("<Q", config)[0] == ((1 << 20) + 4096) // 512 and features & (1 << 32)
        # QEMU 7.2's export: size_max 0, so SIZE_MAX is not passed on (seg_max is).
        assert struct.unpack_from("<I", config, 8)[0] == 0
        assert not features & (1 << 1) and features & (1 << 2)
        process = disks.daemon.process
    finally:
        disks.close()
    assert process.poll() is not None and not directory.exists()
