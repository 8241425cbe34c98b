"""read_input: the whole file in one read when it stays as open_input saw it, and still
the whole file (or one line) when it grew after the check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvmm.errors import LoaderError
from pyvmm.host import inputfile
from pyvmm.host.inputfile import read_input


def test_a_file_is_read_whole_with_one_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "initrd"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    reads: list[int] = []
    real_read = os.read

    def counted(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", counted)
    assert read_input(str(path), "initrd", LoaderError, 8 << 20) == data
    assert reads == [len(data) + 1, inputfile._PIECE]  # the file, then its end


def test_a_file_that_grew_after_the_check_is_read_on_up_to_the_limit(
        tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "kernel"
    data = os.urandom(1 << 20)
    path.write_bytes(data)
    real_fstat = os.fstat

    def smaller(fd: int) -> os.stat_result:  # what open_input saw: 4 KiB
        fields = list(real_fstat(fd))
        fields[6] = 4096  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", smaller)
    assert read_input(str(path), "kernel", LoaderError, 2 << 20) == data
    with pytest.raises(LoaderError, match=r"kernel .* is more than 512.0 KiB"):
        read_input(str(path), "kernel", LoaderError, 512 << 10)
