"""virtio-block over a mock driver queue and a real image file; no VM."""

from __future__ import annotations

import fcntl
import os
import struct

import pytest

from pyvmm.devices.virtio.block import (VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR,
                                        VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
                                        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
                                        VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                                        VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
                                        BlockDevice)
from pyvmm.devices.virtio.device import COMMON_FEATURES
from pyvmm.host.disk_image import DiskImage
from pyvmm.devices.virtio.testing import DriverQueue
from pyvmm.errors import DeviceError
from pyvmm.memory import GuestMemory

SECTORS = 64


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (SECTORS * 2))
    return path


class Harness:
    def __init__(self, path, readonly=False, serial="pyvmm-disk0", event_idx=False):
        self.memory = GuestMemory.from_bytes(4 << 20)
        self.device = BlockDevice(DiskImage(str(path), readonly=readonly),
                                  serial=serial)
        self.interrupts = 0
        self.driver = DriverQueue(self.memory, 0x10000, size=16)
        features = COMMON_FEATURES
        self.driver.configure(self.device.queues[0], event_idx=event_idx)
        self.device.activate(self.memory, features, self._interrupt)

    def _interrupt(self):
        self.interrupts += 1

    def request(self, kind, sector, data=b"", read_length=0, indirect=False):
        """Submit one request; return (status, used length, data read)."""
        header = self.driver.alloc(16, struct.pack("<IIQ", kind, 0, sector))
        buffers = [(header, 16, False)]
        if data:
            buffers.append((self.driver.alloc(len(data), data), len(data), False))
        read_at = None
        if read_length:
            read_at = self.driver.alloc(read_length)
            buffers.append((read_at, read_length, True))
        status = self.driver.alloc(1, b"\xee")
        buffers.append((status, 1, True))
        head = self.driver.add_chain(buffers, indirect=indirect)
        self.device.process_queue(0)
        used = self.driver.take_used()
        assert used and used[-1][0] == head
        read = self.memory.read(read_at, read_length) if read_at else b""
        return self.memory.read_u8(status), used[-1][1], read


def test_read_sectors(image) -> None:
    h = Harness(image)
    status, used, data = h.request(VIRTIO_BLK_T_IN, 2, read_length=1024)
    assert status == VIRTIO_BLK_S_OK and used == 1025
    assert data == image.read_bytes()[1024:2048]
    assert h.interrupts == 1


def test_write_then_flush_reaches_the_file(image) -> None:
    h = Harness(image)
    pattern = b"\xab" * 512
    assert h.request(VIRTIO_BLK_T_OUT, 5, data=pattern)[:2] == (VIRTIO_BLK_S_OK, 1)
    assert h.request(VIRTIO_BLK_T_FLUSH, 0)[0] == VIRTIO_BLK_S_OK
    assert image.read_bytes()[5 * 512:6 * 512] == pattern


def test_indirect_request(image) -> None:
    h = Harness(image)
    status, _, data = h.request(VIRTIO_BLK_T_IN, 0, read_length=512, indirect=True)
    assert status == VIRTIO_BLK_S_OK and data == image.read_bytes()[:512]


def test_get_id(image) -> None:
    status, used, data = Harness(image).request(VIRTIO_BLK_T_GET_ID, 0, read_length=20)
    assert status == VIRTIO_BLK_S_OK
    assert data == b"pyvmm-disk0".ljust(20, b"\0") and used == 21


@pytest.mark.parametrize("sector, length", [(SECTORS, 512), (SECTORS - 1, 1024),
                                            (2**63, 512), (0, 100)])
def test_out_of_range_or_odd_reads_fail(image, sector, length) -> None:
    status, _, _ = Harness(image).request(VIRTIO_BLK_T_IN, sector, read_length=length)
    assert status == VIRTIO_BLK_S_IOERR


def test_write_past_the_end_fails_and_changes_nothing(image) -> None:
    before = image.read_bytes()
    status, _, _ = Harness(image).request(VIRTIO_BLK_T_OUT, SECTORS, data=b"x" * 512)
    assert status == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_readonly_drive_refuses_writes(image) -> None:
    before = image.read_bytes()
    h = Harness(image, readonly=True)
    assert h.device.device_features() >> VIRTIO_BLK_F_RO & 1
    assert h.request(VIRTIO_BLK_T_OUT, 0, data=b"x" * 512)[0] == VIRTIO_BLK_S_IOERR
    assert h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0,
                     data=struct.pack("<QII", 0, 1, 0))[0] == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_readonly_drive_is_never_opened_for_writing(image) -> None:
    os.chmod(image, 0o444)
    disk = DiskImage(str(image), readonly=True)
    assert fcntl.fcntl(disk.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    disk.close()


def test_unknown_request_type(image) -> None:
    assert Harness(image).request(99, 0)[0] == VIRTIO_BLK_S_UNSUPP


def test_write_zeroes_and_discard(image) -> None:
    h = Harness(image)
    segment = struct.pack("<QII", 4, 2, 0)
    assert h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=segment)[0] == VIRTIO_BLK_S_OK
    assert image.read_bytes()[4 * 512:6 * 512] == bytes(1024)
    assert h.request(VIRTIO_BLK_T_DISCARD, 0, data=struct.pack("<QII", 8, 8, 0))[0] \
        == VIRTIO_BLK_S_OK
    bad = struct.pack("<QII", SECTORS - 1, 2, 0)
    assert h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=bad)[0] == VIRTIO_BLK_S_IOERR


def test_short_header_fails_the_request(image) -> None:
    h = Harness(image)
    header = h.driver.alloc(8, b"\0" * 8)
    status = h.driver.alloc(1, b"\xee")
    h.driver.add_chain([(header, 8, False), (status, 1, True)])
    h.device.process_queue(0)
    assert h.memory.read_u8(status) == VIRTIO_BLK_S_IOERR


def test_chain_without_status_byte_is_returned_unused(image) -> None:
    h = Harness(image)
    head = h.driver.add_chain([(h.driver.alloc(16, bytes(16)), 16, False)])
    h.device.process_queue(0)
    assert h.driver.take_used() == [(head, 0)]


def test_config_space_capacity(image) -> None:
    device = Harness(image).device
    buffer = memoryview(bytearray(8))
    device.read_config(0, buffer)
    assert int.from_bytes(buffer, "little") == SECTORS
    assert len(device.config_space()) == 60


def test_image_lock(image) -> None:
    first = DiskImage(str(image))
    with pytest.raises(DeviceError, match="locked by another process"):
        DiskImage(str(image))
    with pytest.raises(DeviceError, match="has write access"):
        DiskImage(str(image), readonly=True)
    first.close()
    DiskImage(str(image)).close()


def test_readers_share_an_image_but_keep_writers_out(image) -> None:
    readers = [DiskImage(str(image), readonly=True) for _ in range(2)]
    with pytest.raises(DeviceError, match="does not share write"):
        DiskImage(str(image))
    for reader in readers:
        reader.close()


def test_image_lock_takes_qemus_lock_bytes(image) -> None:
    """A writer holds bytes 100 (read), 101 (write) and 201 (write not shared)."""
    disk = DiskImage(str(image))
    probe = os.open(image, os.O_RDONLY)
    flock = struct.Struct("hh4xqqi4x")
    held = [offset for offset in (*range(100, 106), *range(200, 206))
            if flock.unpack(fcntl.fcntl(probe, fcntl.F_OFD_GETLK, flock.pack(
                fcntl.F_WRLCK, 0, offset, 1, 0)))[0] != fcntl.F_UNLCK]
    os.close(probe)
    disk.close()
    assert held == [100, 101, 201, 203]


@pytest.mark.parametrize("make", ["fifo", "chardev"])
def test_only_files_and_block_devices_are_images(tmp_path, make) -> None:
    if make == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    for readonly in (False, True):
        with pytest.raises(DeviceError, match="not a regular file or a block device"):
            DiskImage(str(path), readonly=readonly)


def test_read_only_file_needs_readonly_on(image) -> None:
    os.chmod(image, 0o444)
    path = str(image)
    if os.access(path, os.W_OK):
        # Root may write any 0444 file; a sysfs file it may not open for writing.
        path = "/sys/kernel/notes"
    with pytest.raises(DeviceError, match="is not writable .*readonly=on"):
        DiskImage(path)


def test_missing_image(tmp_path) -> None:
    with pytest.raises(DeviceError, match="not found"):
        DiskImage(str(tmp_path / "nope.img"))


def test_cache_none_uses_o_direct_with_unaligned_guest_buffers(image) -> None:
    h = Harness.__new__(Harness)
    h.memory = GuestMemory.from_bytes(4 << 20)
    try:
        disk = DiskImage(str(image), direct=True)
    except DeviceError as exc:
        pytest.skip(str(exc))
    h.device = BlockDevice(disk)
    h.interrupts = 0
    h.driver = DriverQueue(h.memory, 0x10000, size=16)
    h.driver.configure(h.device.queues[0])
    h.device.activate(h.memory, COMMON_FEATURES, lambda: None)
    h.driver.alloc(3)  # misalign what follows
    status, _, data = h.request(VIRTIO_BLK_T_IN, 1, read_length=512)
    assert status == VIRTIO_BLK_S_OK and data == image.read_bytes()[512:1024]
    assert h.request(VIRTIO_BLK_T_OUT, 3, data=b"z" * 512)[0] == VIRTIO_BLK_S_OK
    disk.close()
    assert image.read_bytes()[3 * 512:4 * 512] == b"z" * 512


def test_event_idx_batches_interrupts(image) -> None:
    h = Harness(image, event_idx=True)
    h.driver.set_used_event(5)
    for _ in range(3):
        h.request(VIRTIO_BLK_T_IN, 0, read_length=512)
    assert h.interrupts == 0


def test_read_into_a_read_only_buffer_fails(image) -> None:
    """A T_IN whose data descriptor is device-readable: the device must not write it."""
    h = Harness(image)
    header = h.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    data = h.driver.alloc(512, b"\x11" * 512)
    status = h.driver.alloc(1, b"\xee")
    h.driver.add_chain([(header, 16, False), (data, 512, False), (status, 1, True)])
    h.device.process_queue(0)
    assert h.memory.read_u8(status) == VIRTIO_BLK_S_IOERR
    assert h.memory.read(data, 512) == b"\x11" * 512


def test_write_with_writable_data_fails(image) -> None:
    before = image.read_bytes()
    h = Harness(image)
    header = h.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_OUT, 0, 0))
    data = h.driver.alloc(512, b"\x22" * 512)
    status = h.driver.alloc(1, b"\xee")
    h.driver.add_chain([(header, 16, False), (data, 512, True), (status, 1, True)])
    h.device.process_queue(0)
    assert h.memory.read_u8(status) == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before



def test_config_space_advertises_the_limits_it_enforces(image) -> None:
    from pyvmm.devices.virtio.block import (MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS,
                                            SEG_MAX, SIZE_MAX, VIRTIO_BLK_F_SIZE_MAX)

    device = Harness(image).device
    assert device.device_features() >> VIRTIO_BLK_F_SIZE_MAX & 1
    config = device.config_space()
    size_max, seg_max = struct.unpack_from("<II", config, 8)
    discard = struct.unpack_from("<III", config, 36)
    zeroes = struct.unpack_from("<II", config, 48)
    assert (size_max, seg_max) == (SIZE_MAX, SEG_MAX)
    assert discard == (MAX_DISCARD_SECTORS, 1, 8)
    assert zeroes == (MAX_WRITE_ZEROES_SECTORS, 1)


def test_overlapping_discard_payload_is_refused_without_reading_it(image) -> None:
    """Many descriptors over one big buffer: once the audit grew RSS by gigabytes."""
    import tracemalloc

    h = Harness(image)
    before = image.read_bytes()
    payload = h.driver.alloc(1 << 20)
    for kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        header = h.driver.alloc(16, struct.pack("<IIQ", kind, 0, 0))
        status = h.driver.alloc(1, b"\xee")
        buffers = [(header, 16, False)] + [(payload, 1 << 20, False)] * 12 + [(status, 1, True)]
        h.driver.add_chain(buffers, indirect=True)
        tracemalloc.start()
        h.device.process_queue(0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert h.memory.read_u8(status) == VIRTIO_BLK_S_IOERR
        assert peak < 256 << 10
    assert image.read_bytes() == before


def test_write_zeroes_range_is_bounded(image, monkeypatch) -> None:
    import pyvmm.devices.virtio.block as block

    monkeypatch.setattr(block, "MAX_WRITE_ZEROES_SECTORS", 4)
    h = Harness(image)
    assert h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=struct.pack("<QII", 0, 5, 0))[0] \
        == VIRTIO_BLK_S_IOERR
    assert h.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, data=struct.pack("<QII", 0, 4, 0))[0] \
        == VIRTIO_BLK_S_OK
    two = struct.pack("<QII", 0, 1, 0) * 2  # more segments than advertised (1)
    assert h.request(VIRTIO_BLK_T_DISCARD, 0, data=two)[0] == VIRTIO_BLK_S_IOERR


def test_request_larger_than_seg_max_times_size_max_fails(image, monkeypatch) -> None:
    import pyvmm.devices.virtio.block as block

    monkeypatch.setattr(block, "SIZE_MAX", 512)
    monkeypatch.setattr(block, "SEG_MAX", 2)  # so at most 1024 bytes a request
    before = image.read_bytes()
    h = Harness(image)
    assert h.request(VIRTIO_BLK_T_IN, 0, read_length=1536)[0] == VIRTIO_BLK_S_IOERR
    assert h.request(VIRTIO_BLK_T_OUT, 0, data=b"q" * 1536)[0] == VIRTIO_BLK_S_IOERR
    assert h.request(VIRTIO_BLK_T_IN, 0, read_length=1024)[0] == VIRTIO_BLK_S_OK  # one buffer
    header = h.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    status = h.driver.alloc(1, b"\xee")
    h.driver.add_chain([(header, 16, False)] + [(h.driver.alloc(512), 512, True)] * 3
                       + [(status, 1, True)])  # three buffers: more than seg_max
    h.device.process_queue(0)
    assert h.memory.read_u8(status) == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before


def test_cache_none_bounce_buffer_stays_bounded(tmp_path) -> None:
    """An unaligned 3 MiB read and write go through a 1 MiB bounce buffer, correctly."""
    from pyvmm.host.disk_image import BOUNCE_SIZE

    path = tmp_path / "big.img"
    content = os.urandom(4 << 20)
    path.write_bytes(content)
    try:
        disk = DiskImage(str(path), direct=True)
    except DeviceError as exc:
        pytest.skip(str(exc))
    memory = GuestMemory.from_bytes(16 << 20)
    views = [memory.view(0x1003, 1 << 20), memory.view(0x200005, 2 << 20)]
    assert disk.read_into(views, 4096) == 3 << 20
    assert bytes(views[0]) + bytes(views[1]) == content[4096:4096 + (3 << 20)]
    assert disk._bounce is not None and len(disk._bounce) == BOUNCE_SIZE
    memory.write(0x1003, b"\x5a" * (1 << 20))
    assert disk.write_from(views, 0) == 3 << 20
    for view in views:
        view.release()
    disk.close()
    data = path.read_bytes()
    assert data[:1 << 20] == b"\x5a" * (1 << 20)
    assert data[1 << 20:3 << 20] == content[4096 + (1 << 20):4096 + (3 << 20)]
    assert data[3 << 20:] == content[3 << 20:]


def test_out_of_budget_the_device_still_asks_for_the_next_notification(image, monkeypatch) -> None:
    """Stopping early (time budget) must publish avail_event, or with EVENT_IDX the
    driver never notifies again for the chains it adds later."""
    monkeypatch.setattr("pyvmm.devices.virtio.device.SERVE_BUDGET_SECONDS", -1.0)
    monkeypatch.setattr("pyvmm.devices.virtio.block.SERVE_BUDGET_SECONDS", 0.0)  # the C loop's
    h = Harness(image, event_idx=True)
    for _ in range(3):
        header = h.driver.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
        h.driver.add_chain([(header, 16, False), (h.driver.alloc(512), 512, True),
                            (h.driver.alloc(1), 1, True)])
    h.device.process_queue(0)             # one chain per call once the budget is spent
    assert h.driver.avail_event() == 1    # "notify me for chain 1 on"
    assert h.device.pending(0)            # and the caller knows chains 1 and 2 wait
    h.device.process_queue(0)
    h.device.process_queue(0)
    assert h.driver.avail_event() == 3 and not h.device.pending(0)


@pytest.fixture
def loop_device(tmp_path):
    """A block device (a loop device over a 4 MiB file), where the host allows one."""
    import shutil
    import subprocess

    backing = tmp_path / "backing.img"
    backing.write_bytes(bytes(range(256)) * (4 << 12))
    if shutil.which("losetup") is None:
        pytest.skip("no losetup")
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    yield device, backing
    subprocess.run(["losetup", "-d", device], check=False)


def test_block_device_drive_is_sized_and_written(loop_device) -> None:
    device, backing = loop_device
    h = Harness.__new__(Harness)
    h.memory = GuestMemory.from_bytes(4 << 20)
    disk = DiskImage(device)
    assert disk.sectors == (4 << 20) // 512  # BLKGETSIZE64, not st_size (0)
    h.device = BlockDevice(disk)
    h.interrupts = 0
    h.driver = DriverQueue(h.memory, 0x10000, size=16)
    h.driver.configure(h.device.queues[0])
    h.device.activate(h.memory, COMMON_FEATURES, lambda: None)
    assert h.request(VIRTIO_BLK_T_OUT, 7, data=b"\x77" * 512)[0] == VIRTIO_BLK_S_OK
    assert h.request(VIRTIO_BLK_T_IN, (4 << 20) // 512, read_length=512)[0] \
        == VIRTIO_BLK_S_IOERR  # past the end
    with pytest.raises(DeviceError, match="locked"):
        DiskImage(device)
    disk.close()
    assert backing.read_bytes()[7 * 512:8 * 512] == b"\x77" * 512
