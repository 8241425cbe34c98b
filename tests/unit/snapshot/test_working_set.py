"""What a clone wrote, read from the pagemap, and copied into the next clone before it runs."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Iterator

import pytest

from pyvmm.memory import GuestMemory
from pyvmm.snapshot import workingset
from pyvmm.snapshot.workingset import PAGE, copy_ahead, own_page_runs, written_runs

PAGES = 64


def _address(mapping: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


@pytest.fixture
def ram_file(tmp_path) -> Iterator[int]:
    """A file of ``PAGES`` pages, each filled with its own number (the snapshot's RAM)."""
    fd = os.open(tmp_path / "memory.raw", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"".join(bytes([page]) * PAGE for page in range(PAGES)))
    yield fd
    os.close(fd)


def _clone(fd: int, regions: tuple[tuple[int, int], ...] = ((0, PAGES),)) -> GuestMemory:
    """RAM mapped privately from ``fd``, as a restore maps it: (first page, pages) per region."""
    return GuestMemory.private_file(fd, [(first * PAGE, count * PAGE, first * PAGE)
                                         for first, count in regions])


def test_only_the_pages_written_are_the_mappings_own(ram_file: int) -> None:
    memory = _clone(ram_file)
    mapping = memory.regions[0].buffer
    assert own_page_runs(_address(mapping), PAGES * PAGE) == []  # untouched
    for page in (1, 2, 3, 10, 63):
        mapping[page * PAGE] = 0xFF                      # written: copied for this mapping
    for page in (5, 20, 40):
        assert mapping[page * PAGE] == page              # read: still the file's page
    assert own_page_runs(_address(mapping), PAGES * PAGE) == [(1, 3), (10, 1), (63, 1)]
    memory.close()


def test_a_run_across_two_reads_of_the_pagemap_is_one_run(ram_file: int, monkeypatch) -> None:
    monkeypatch.setattr(workingset, "_CHUNK_PAGES", 4)
    memory = _clone(ram_file)
    mapping = memory.regions[0].buffer
    for page in range(2, 11):
        mapping[page * PAGE] = 0
    assert own_page_runs(_address(mapping), PAGES * PAGE) == [(2, 9)]
    memory.close()


def test_the_written_runs_name_their_region_and_stop_at_the_limit(ram_file: int,
                                                                  monkeypatch) -> None:
    memory = _clone(ram_file, ((0, 16), (32, 32)))
    low, high = (region.buffer for region in memory.regions)
    low[3 * PAGE] = high[0] = high[5 * PAGE] = high[6 * PAGE] = high[7 * PAGE] = 1
    assert written_runs(memory, _address) == ((0, 3, 1), (1, 0, 1), (1, 5, 3))
    monkeypatch.setattr(workingset, "MAX_PAGES", 3)
    assert written_runs(memory, _address) == ((0, 3, 1), (1, 0, 1), (1, 5, 1))
    memory.close()


def test_copied_ahead_pages_are_the_clones_own_with_the_files_content(ram_file: int) -> None:
    first = _clone(ram_file)
    for page in (4, 5, 30):
        first.regions[0].buffer[page * PAGE + 7] = 0xEE
    runs = written_runs(first, _address)
    first.close()
    clone = _clone(ram_file)
    assert copy_ahead(clone, runs) == 3
    mapping = clone.regions[0].buffer
    assert own_page_runs(_address(mapping), PAGES * PAGE) == [(4, 2), (30, 1)]
    assert bytes(mapping[:]) == os.pread(ram_file, PAGES * PAGE, 0)  # the file's, not the first's
    os.pwrite(ram_file, b"\x99", 31 * PAGE)
    assert mapping[31 * PAGE] == 0x99  # a page not copied still shows the file (shared)
    assert mapping[30 * PAGE] == 30    # a copied one is the clone's own
    clone.close()


def test_the_first_clone_that_ran_teaches_its_files_next_clones(ram_file: int) -> None:
    workingset.forget()
    key = (1, 2, 3, 4)
    idle = _clone(ram_file)
    workingset.learn(key, idle, _address)       # never ran: wrote nothing, teaches nothing
    assert workingset.learned(key) == ()
    first = _clone(ram_file)
    first.regions[0].buffer[9 * PAGE] = 1
    workingset.learn(key, first, _address)
    second = _clone(ram_file)
    second.regions[0].buffer[40 * PAGE] = 1
    workingset.learn(key, second, _address)     # already taught: the first clone's set stays
    assert workingset.learned(key) == ((0, 9, 1),)
    assert workingset.learned((1, 2, 3, 5)) == ()  # another file (here: another mtime)
    for memory in (idle, first, second):
        memory.close()
    workingset.forget()
