"""pyvmm.Machine's console without a guest: output fed by hand, expect/read/write."""

from __future__ import annotations

import os
import threading

import pytest

from pyvmm.console.guest import Console


@pytest.fixture
def console():
    console = Console()
    yield console
    console.close()


def test_expect_moves_past_each_match(console: Console) -> None:
    console._received(b"login: root\nlogin: again\n")
    assert console.expect("login: (\\w+)", 1).group(1) == "root"
    assert console.expect("login: (\\w+)", 1).group(1) == "again"
    with pytest.raises(TimeoutError, match="did not show"):
        console.expect("login", 0.05)


def test_text_patterns_count_bytes_right_across_utf8_and_bad_bytes(console: Console) -> None:
    console._received("héllo \xff".encode() + b"\xfe w\xc3")  # a character cut in two
    assert console.expect("w", 1).group(0) == "w"
    console._received(b"\xa9rld")  # the rest of it
    assert console.expect("(.)rld", 1).group(1) == "é"
    assert console.read() == b""


def test_bytes_patterns_and_read(console: Console) -> None:
    console._received(b"\x00\x01abc")
    assert console.expect(rb"\x01(a)", 1).group(1) == b"a"
    assert console.read() == b"bc"
    assert console.output == b"\x00\x01abc"


def test_expect_waits_for_output_to_come(console: Console) -> None:
    threading.Timer(0.05, console._received, [b"ready\n"]).start()
    assert console.expect("ready", 5)


def test_expect_after_the_machine_stopped_raises_eof(console: Console) -> None:
    console._received(b"bye\n")
    console.machine_stopped("the guest powered off")
    with pytest.raises(EOFError, match="powered off"):
        console.expect("never", 5)
    assert console.expect("bye", 0)


def test_write_goes_to_the_machine_side_input(console: Console) -> None:
    console.write("typed")
    assert os.read(console.machine_side.stdin_fd, 100) == b"typed"
    with pytest.raises(TimeoutError, match="did not take"):
        console.write(b"x" * (1 << 20), timeout=0.1)  # the pipe fills: nobody reads
