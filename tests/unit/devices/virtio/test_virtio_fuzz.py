"""Property: whatever a guest writes into its rings, the device never raises.

Random descriptor tables and available rings (addresses near and past the end
of RAM, loops, indirect tables, odd lengths) go through the real transport
and block device.  Every access goes through GuestMemory's bounds checks, so
"nothing outside the guest is touched" holds when no access escapes them: the
property is that processing ends (no hang), raises nothing, and leaves the
device either working or in DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.block import BlockDevice
from pyvmm.devices.virtio.device import COMMON_FEATURES
from pyvmm.host.disk_image import DiskImage
from pyvmm.devices.virtio.testing import CountingTrigger
from pyvmm.memory import GuestMemory

RAM = 1 << 20
QUEUE = 8
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000

addresses = st.one_of(st.integers(0, RAM + 64), st.sampled_from([RAM - 1, RAM - 16, 2**64 - 1]),
                      st.integers(0, 2**64 - 1))
descriptors = st.tuples(addresses, st.integers(0, 2**32 - 1) | st.integers(0, 600),
                        st.integers(0, 7), st.integers(0, 20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(table=st.lists(descriptors, min_size=QUEUE, max_size=QUEUE),
       ring=st.lists(st.integers(0, 12), min_size=QUEUE, max_size=QUEUE),
       avail_idx=st.integers(0, 0xFFFF),
       indirect=st.lists(descriptors, min_size=0, max_size=4))
def test_random_rings_never_break_the_device(tmp_path_factory, table, ring, avail_idx,
                                             indirect) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "disk.img"
    path.write_bytes(bytes(64 * 512))
    memory = GuestMemory.from_bytes(RAM)
    device = BlockDevice(DiskImage(str(path)))
    transport = mmio.VirtioMmioTransport(device, memory, CountingTrigger())
    for i, entry in enumerate(indirect):  # a table some descriptors may point at
        memory.write(0x8000 + 16 * i, struct.pack("<QIHH", *entry))
    for i, (addr, length, flags, next_index) in enumerate(table):
        if i % 3 == 0 and indirect:
            addr, length = 0x8000, 16 * len(indirect)
        memory.write(DESC + 16 * i, struct.pack("<QIHH", addr, length, flags, next_index))
    for i, head in enumerate(ring):
        memory.write_u16(AVAIL + 4 + 2 * i, head)
    memory.write_u16(AVAIL + 2, avail_idx)

    queue = device.queues[0]
    queue.size, queue.desc_addr, queue.avail_addr, queue.used_addr = QUEUE, DESC, AVAIL, USED
    queue.activate(memory, event_idx=False)
    queue.ready = True
    transport.status = 0b1111
    device.activate(memory, COMMON_FEATURES, lambda: None)
    try:
        transport.notify(0)
        transport.notify(0)
    finally:
        device.shutdown()
    assert transport.status & mmio.STATUS_NEEDS_RESET or queue.next_used == queue.next_avail


# -- the hostile driver: MMIO of every width, bring-ups, rings, notifications, input ----

from tests.unit.devices.virtio.virtio_fuzzing import run_one, runs  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs)
def test_hostile_driver_never_escapes_the_bounds(run) -> None:
    """No exception, nothing written outside RAM, the disk never grows, each step < 1 s
    and allocating less than guest RAM (see tests/unit/devices/virtio/virtio_fuzzing.py)."""
    kind, ops = run
    run_one(kind, ops)


def test_the_checks_can_fail(tmp_path) -> None:
    """The properties are real: a write past a RAM range, or a grown disk, is caught."""
    import pytest

    from tests.unit.devices.virtio.virtio_fuzzing import RANGE, World

    world = World("block", str(tmp_path))
    world.backing[RANGE + 4096 + 10] ^= 0xFF  # just past the first range
    with pytest.raises(AssertionError, match="outside guest RAM"):
        world.check()
    world.backing[RANGE + 4096 + 10] ^= 0xFF
    with open(world.disk_path, "ab") as stream:
        stream.write(b"x")
    with pytest.raises(AssertionError, match="disk grew"):
        world.check()
    world.close()
