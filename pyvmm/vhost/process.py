"""A back-end daemon pyvmm starts (virtiofsd, qemu-storage-daemon): private, watched, reaped.

Each gets a private 0700 directory of ours for its sockets, its stdout and
stderr go to a log file there (0600, O_EXCL), so a failure can be told in
one line (its last words) without mixing its chatter into the guest's
console, and ``close`` ends it and removes the directory, whatever state it
is in: every exit path of pyvmm calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Sequence, TypeVar

from pyvmm.errors import HostError

T = TypeVar("T")
#: How long a starting daemon may take to listen.
START_SECONDS = 10.0


class BackendProcess:
    """A daemon started with ``command(directory)`` in a private directory."""

    def __init__(self, name: str, prefix: str, command: Callable[[str], list[str]],
                 pass_fds: Sequence[int] = (), noise: tuple[str, ...] = (),
                 lost: str = "closed its connection") -> None:
        """``pass_fds`` are handed to it; log lines starting with ``noise`` say nothing
        about a failure; ``lost`` says how its connection went away, if it still runs."""
        self.name = name
        self._noise = noise
        self._lost = lost
        self.directory = tempfile.mkdtemp(prefix=prefix)  # 0700, a fresh name
        self._log_path = os.path.join(self.directory, "daemon.log")
        log_fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        argv = command(self.directory)
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, close_fds=True,
                pass_fds=tuple(pass_fds), start_new_session=True)  # a Ctrl-C on the terminal is for pyvmm, not for it
        except OSError as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise HostError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        except BaseException:
            # A signal that unwinds pyvmm (Signalled) while Popen waits for the exec:
            # nobody holds this object yet, so its directory goes here.
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        finally:
            os.close(log_fd)

    def path(self, name: str) -> str:
        """A file in the private directory."""
        return os.path.join(self.directory, name)

    def wait_for(self, socket_path: str, connect: Callable[[str], T]) -> T:
        """``connect(socket_path)`` once the daemon listens there; HostError if it dies
        or does not listen within START_SECONDS."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise HostError(f"{self.name} exited with status {self.process.returncode}"
                                f"{self.last_words()}")
            if os.path.exists(socket_path):
                try:
                    return connect(socket_path)
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            if time.monotonic() > deadline:
                raise HostError(f"{self.name} did not listen within {START_SECONDS:g} s"
                                f"{self.last_words()}")
            time.sleep(0.01)

    def last_words(self) -> str:
        """``: <its last log line>``, or nothing."""
        try:
            with open(self._log_path, "rb") as stream:
                lines = [line for line in stream.read()[-4096:].decode(errors="replace")
                         .splitlines()
                         if line.strip() and not line.strip().startswith(self._noise)]
        except OSError:
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def exited(self, wait: float = 0.0) -> bool:
        """Whether the daemon has exited (waiting up to ``wait`` seconds for it)."""
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def death_reason(self) -> str:
        """One line for a back end whose connection went away."""
        try:
            status = self.process.wait(0.5)
            how = f"exited with status {status}" if status >= 0 else f"was killed by signal {-status}"
        except subprocess.TimeoutExpired:
            how = self._lost
        return f"{self.name} {how}{self.last_words()}"

    def stop(self) -> None:
        """End the daemon (SIGTERM, then SIGKILL after 2 s) and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
