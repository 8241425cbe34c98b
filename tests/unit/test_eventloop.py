"""The epoll loop: handlers, stop from another thread, deadlines."""

from __future__ import annotations

import os
import threading
import time

from pyvmm.eventloop import EventLoop


def test_handler_runs_and_stop_from_thread() -> None:
    loop = EventLoop()
    read_end, write_end = os.pipe()
    seen = []

    def on_read(_events: int) -> None:
        seen.append(os.read(read_end, 10))
        threading.Thread(target=loop.stop).start()

    loop.add(read_end, on_read)
    os.write(write_end, b"ping")
    assert loop.run(deadline=time.monotonic() + 5) is True
    assert seen == [b"ping"]
    loop.close()
    os.close(read_end)
    os.close(write_end)


def test_deadline_returns_false() -> None:
    loop = EventLoop()
    start = time.monotonic()
    assert loop.run(deadline=start + 0.05) is False
    assert time.monotonic() - start >= 0.05
    loop.close()


def test_regular_files_cannot_be_watched(tmp_path) -> None:
    loop = EventLoop()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            loop.add(fd, lambda _e: None)
        except PermissionError:
            pass
        else:  # pragma: no cover - epoll refuses regular files on Linux
            raise AssertionError("epoll accepted a regular file")
    finally:
        os.close(fd)
        loop.close()


def test_timers_run_on_the_loop_in_order_even_when_asked_from_another_thread() -> None:
    loop = EventLoop()
    ran: list[tuple[str, str]] = []
    start = time.monotonic()

    def note(name: str) -> None:
        ran.append((name, threading.current_thread().name))
        if name == "last":
            loop.stop()

    loop.call_at(start + 0.05, lambda: note("second"))
    asker = threading.Thread(target=lambda: loop.call_at(start + 0.02, lambda: note("first")))
    asker.start()
    asker.join()
    loop.call_at(start + 0.08, lambda: note("last"))
    assert loop.run(deadline=start + 5)
    assert ran == [(name, threading.main_thread().name) for name in ("first", "second", "last")]
    assert time.monotonic() - start >= 0.08
    loop.close()
