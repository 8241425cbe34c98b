"""virtio-rng over a mock driver queue: random bytes into writable buffers, bounded."""

from __future__ import annotations

import tracemalloc

from click.testing import CliRunner

from pyvmm.devices.virtio import mmio
from pyvmm.devices.virtio.device import COMMON_FEATURES
from pyvmm.devices.virtio.rng import REQUEST_LIMIT, VIRTIO_ID_RNG, RngDevice
from pyvmm.devices.virtio.testing import CountingTrigger, DriverQueue
from pyvmm.memory import GuestMemory


class Guest:
    def __init__(self, source=None) -> None:
        self.memory = GuestMemory.from_bytes(4 << 20)
        self.device = RngDevice(source) if source else RngDevice()
        self.interrupts = 0
        self.driver = DriverQueue(self.memory, 0x10000, size=16)
        self.driver.configure(self.device.queues[0])
        self.device.activate(self.memory, COMMON_FEATURES, self._interrupt)

    def _interrupt(self) -> None:
        self.interrupts += 1

    def ask(self, *lengths: int, indirect: bool = False) -> tuple[list[tuple[int, int]], list]:
        addresses = [self.driver.alloc(n, b"\0" * n) for n in lengths]
        self.driver.add_chain([(a, n, True) for a, n in zip(addresses, lengths)],
                              indirect=indirect)
        self.device.process_queue(0)
        return self.driver.take_used(), addresses


def test_fills_the_buffers_with_what_getrandom_gives() -> None:
    guest = Guest(source=lambda n: bytes(range(1, 256)) * (n // 255 + 1))
    used, (first, second) = guest.ask(10, 300)
    assert used == [(0, 310)]
    assert guest.memory.read(first, 10) == bytes(range(1, 11))
    assert guest.memory.read(second, 300)[:5] == bytes(range(11, 16))
    assert guest.interrupts == 1


def test_real_randomness_differs_per_request() -> None:
    guest = Guest()
    _, (a,) = guest.ask(64)
    _, (b,) = guest.ask(64, indirect=True)
    assert guest.memory.read(a, 64) != guest.memory.read(b, 64) != bytes(64)
    assert guest.device.bytes_given == 128


def test_a_huge_chain_gets_at_most_the_limit_and_costs_no_more() -> None:
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return bytes([0xAB]) * n

    guest = Guest(source)
    address = guest.driver.alloc(3 << 20)  # 3 MiB of guest RAM in one buffer
    guest.driver.add_chain([(address, 3 << 20, True)])
    tracemalloc.start()
    guest.device.process_queue(0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    used = guest.driver.take_used()
    assert used == [(0, REQUEST_LIMIT)] and asked == [REQUEST_LIMIT]
    assert guest.memory.read(address + REQUEST_LIMIT - 1, 2) == b"\xab\0"
    assert peak < 4 * REQUEST_LIMIT


def test_a_chain_with_nothing_writable_is_used_empty() -> None:
    guest = Guest()
    address = guest.driver.alloc(16, bytes(16))
    guest.driver.add_chain([(address, 16, False)])
    guest.device.process_queue(0)
    assert guest.driver.take_used() == [(0, 0)]
    assert guest.device.bytes_given == 0


def test_the_transport_names_it_entropy() -> None:
    transport = mmio.VirtioMmioTransport(RngDevice(), GuestMemory.from_bytes(1 << 20),
                                         CountingTrigger())
    data = memoryview(bytearray(4))
    transport.read(mmio.DEVICE_ID, data)
    assert int.from_bytes(data, "little") == VIRTIO_ID_RNG == 4


def test_rng_is_off_by_default_and_last_when_on() -> None:
    from pyvmm.cli.main import main
    import json

    def kinds(*args: str) -> list[tuple[str, int]]:
        result = CliRunner().invoke(main, ["config", "show", "--json", "-k", "bzImage", *args])
        assert result.exit_code == 0, result.output
        return [(d["kind"], d["irq"]) for d in json.loads(result.output)["virtio_devices"]]

    assert kinds("-d", "a.img") == [("block", 5), ("console", 6)]
    assert kinds("-d", "a.img", "--rng") == [("block", 5), ("console", 6), ("rng", 7)]
