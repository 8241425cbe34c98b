"""virtio-fs over the mmio transport: config space, features, what reaches the back end."""

from __future__ import annotations

import os
from typing import Sequence

import pytest

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.fs import QUEUE_SIZE, FsDevice
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue, MmioDriver
from pyvmm.errors import ConfigError, DeviceError
from pyvmm.memory import GuestMemory
from pyvmm.vhost.frontend import MemoryRegionFd, VringConfig

BACKEND_FEATURES = (1 << 32) | (1 << 29) | (1 << 30) | (1 << 28) | (1 << 0) | (1 << 34)


class FakeBackend:
    def __init__(self, fail: str = "") -> None:
        self.started: list[tuple[int, list[MemoryRegionFd], list[VringConfig]]] = []
        self.stopped: list[int] = []
        self.fail = fail

    def start(self, features: int, regions: Sequence[MemoryRegionFd],
              vrings: Sequence[VringConfig], backend_features: int) -> None:
        if self.fail:
            raise DeviceError(self.fail)
        self.started.append((features, list(regions), list(vrings)))

    def get_vring_base(self, index: int) -> int:
        self.stopped.append(index)
        return 0


def make(backend: FakeBackend, shared: bool = True, tag: str = "root"):
    memory = GuestMemory.anonymous([(0, 1 << 20)], shared=shared)
    failures: list[str] = []
    device = FsDevice(backend, BACKEND_FEATURES, tag, failures.append, request_queues=1)
    call_fd = os.eventfd(0, os.EFD_NONBLOCK)
    device.call_fd = call_fd
    transport = mmio.VirtioMmioTransport(device, memory, CountingTrigger())
    return memory, device, transport, failures


def bring_up(memory, transport) -> list[DriverQueue]:
    queues = [DriverQueue(memory, 0x10000 * (i + 1), size=64) for i in range(2)]
    MmioDriver(transport).bring_up(queues)
    return queues


def test_config_space_holds_the_tag_and_queue_count() -> None:
    memory, device, transport, _ = make(FakeBackend(), tag="hostroot")
    assert MmioDriver(transport).read(mmio.DEVICE_ID) == 26
    config = bytes(MmioDriver(transport).read(mmio.CONFIG + i, 1) for i in range(40))
    assert config == b"hostroot" + bytes(28) + (1).to_bytes(4, "little")
    assert MmioDriver(transport).read(mmio.CONFIG + 36) == 1
    assert MmioDriver(transport).read(mmio.QUEUE_NUM_MAX) == QUEUE_SIZE


def test_only_split_ring_features_of_the_back_end_are_offered() -> None:
    _, device, _, _ = make(FakeBackend())
    assert device.device_features() == (1 << 32) | (1 << 29) | (1 << 28)


@pytest.mark.parametrize("tag", ["", "x" * 37, "a,b", "a\0b"])
def test_bad_tags_are_refused(tag: str) -> None:
    """The schema has the rule (one line naming the option); the device refuses what can't fit."""
    from pyvmm.config.machine import config_from_options

    with pytest.raises(ConfigError, match="tag"):
        config_from_options(kernel="k", shares=[{"path": "/srv", "tag": tag}])
    if len(tag) not in range(1, 37):
        with pytest.raises(ValueError, match="tag"):
            make(FakeBackend(), tag=tag)


def test_driver_ok_hands_the_rings_and_ram_to_the_back_end() -> None:
    backend = FakeBackend()
    memory, device, transport, failures = make(backend)
    queues = bring_up(memory, transport)
    assert not failures
    (features, regions, vrings), = backend.started
    assert features == device.device_features()
    assert regions == [MemoryRegionFd(0, 1 << 20, memory.regions[0].fd, 0)]
    assert [(v.index, v.size, v.desc_addr, v.avail_addr, v.used_addr) for v in vrings] == [
        (i, 64, q.desc, q.avail, q.used) for i, q in enumerate(queues)]
    assert [v.kick_fd for v in vrings] == device.kick_fds
    assert {v.call_fd for v in vrings} == {device.call_fd}
    # The back end raises interrupts itself: InterruptStatus always shows a used buffer.
    assert MmioDriver(transport).read(mmio.INTERRUPT_STATUS) == mmio.INTERRUPT_USED_BUFFER
    # A notify that reaches the transport is passed on through the queue's kick eventfd.
    os.eventfd_read(device.kick_fds[1])  # DRIVER_OK kicked the ready queues
    MmioDriver(transport).write(mmio.QUEUE_NOTIFY, 1)
    assert os.eventfd_read(device.kick_fds[1]) == 1
    # A reset stops the back end's rings.
    MmioDriver(transport).write(mmio.STATUS, 0)
    assert backend.stopped == [0, 1]
    device.close()


def test_a_back_end_failing_at_start_is_reported() -> None:
    memory, device, transport, failures = make(FakeBackend(fail="virtiofsd closed the connection"))
    bring_up(memory, transport)
    assert failures == ["virtiofsd closed the connection"]


def test_private_ram_cannot_be_shared() -> None:
    memory, device, transport, failures = make(FakeBackend(), shared=False)
    with pytest.raises(DeviceError, match="shared"):
        bring_up(memory, transport)


def test_share_options_parse_and_tags_must_differ() -> None:
    from pyvmm.config.machine import MachineConfig
    from pyvmm.config.tables import ShareConfig, parse_share

    assert parse_share("/srv", 2) == ShareConfig("/srv", "share2", False)
    assert parse_share("/srv,tag=data,ro") == ShareConfig("/srv", "data", True)
    for bad in ("/srv,tag=", "/srv,mode=x", ",ro", "/srv,tag=" + "x" * 37):
        with pytest.raises(ConfigError):
            parse_share(bad)
    with pytest.raises(ConfigError, match="given twice"):
        MachineConfig(kernel="k", shares=(ShareConfig("/a", "t"), ShareConfig("/b", "t")))


def test_a_missing_share_is_one_line_before_anything_starts(tmp_path) -> None:
    from click.testing import CliRunner

    from pyvmm.cli.main import main

    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    result = CliRunner().invoke(main, ["run", "-k", str(kernel), "--share",
                                       str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip() == f"pyvmm: error: --share {tmp_path / 'nope'}: does not exist"
