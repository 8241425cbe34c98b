"""Console escapes (Ctrl-A) and raw-mode restoration."""

from __future__ import annotations

import os
import pty
import termios

from pyvmm.console.host import EscapeParser, HostConsole, Terminal


def test_plain_bytes_pass_through() -> None:
    assert EscapeParser().feed(b"ls\r\x03") == (b"ls\r\x03", [])


def test_ctrl_a_x_is_a_command_not_guest_input() -> None:
    parser = EscapeParser()
    assert parser.feed(b"ab\x01xcd") == (b"abcd", ["x"])


def test_ctrl_a_ctrl_a_sends_one_ctrl_a() -> None:
    assert EscapeParser().feed(b"\x01\x01") == (b"\x01", [])


def test_escape_split_across_reads() -> None:
    parser = EscapeParser()
    assert parser.feed(b"q\x01") == (b"q", [])
    assert parser.feed(b"h") == (b"", ["h"])


def test_terminal_restored_after_raw_mode() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        terminal = Terminal(slave)
        terminal.make_raw()
        assert termios.tcgetattr(slave)[3] & termios.ECHO == 0
        terminal.restore()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_host_console_quits_on_ctrl_a_x_from_a_tty() -> None:
    master, slave = pty.openpty()
    quits = []
    try:
        console = HostConsole(on_quit=lambda: quits.append(1), stdin_fd=slave,
                              stdout_fd=slave)
        console.start()
        os.write(master, b"hi\x01x")
        assert console.read_input() == b"hi"
        assert quits == [1]
        console.restore()
    finally:
        os.close(master)
        os.close(slave)


def test_non_tty_input_is_passed_verbatim_and_eof_noted() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"\x01x")
    os.close(write_end)
    console = HostConsole(on_quit=lambda: None, stdin_fd=read_end, stdout_fd=1)
    assert console.read_input() == b"\x01x"
    assert console.read_input() == b""
    assert console.at_eof
    os.close(read_end)


def test_empty_blocking_stdin_is_not_waited_for() -> None:
    read_end, write_end = os.pipe()
    console = HostConsole(on_quit=lambda: None, stdin_fd=read_end, stdout_fd=write_end)
    assert os.get_blocking(read_end)
    assert console.read_input() == b""  # returns at once: nothing to read yet
    assert not console.at_eof
    os.close(read_end)
    os.close(write_end)


def test_full_non_blocking_stdout_waits_instead_of_dropping() -> None:
    """stdout made O_NONBLOCK by someone else, read slowly: every byte still arrives."""
    import threading
    import time

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    console = HostConsole(on_quit=lambda: None, stdin_fd=read_end, stdout_fd=write_end)
    data = bytes(range(256)) * 4096  # 1 MiB, far more than a pipe holds
    received = bytearray()

    def slow_reader() -> None:
        while len(received) < len(data):
            time.sleep(0.005)
            received.extend(os.read(read_end, 65536))
    reader = threading.Thread(target=slow_reader)
    reader.start()
    console.write(data)
    reader.join(30)
    assert bytes(received) == data
    os.close(read_end)
    os.close(write_end)


def test_restore_puts_back_the_file_flags() -> None:
    read_end, write_end = os.pipe()
    console = HostConsole(on_quit=lambda: None, stdin_fd=read_end, stdout_fd=write_end)
    console.start()
    os.set_blocking(read_end, False)   # changed while running (by anyone)
    os.set_blocking(write_end, False)
    console.restore()
    assert os.get_blocking(read_end) and os.get_blocking(write_end)
    os.close(read_end)
    os.close(write_end)


def test_fatal_signals_are_catchable_and_exclude_faults() -> None:
    import signal

    from pyvmm.console.host import FATAL_SIGNALS

    for signum in (signal.SIGQUIT, signal.SIGUSR2, signal.SIGALRM, signal.SIGTERM):
        assert signum in FATAL_SIGNALS
    for signum in (signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL, signal.SIGUSR1):
        assert signum not in FATAL_SIGNALS
