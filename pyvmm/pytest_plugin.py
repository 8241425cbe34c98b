"""pyvmm's pytest plugin (entry point ``pytest11``: ``pyvmm``): guests as test fixtures.

* ``pyvmm_machine``: a factory, ``pyvmm_machine(kernel=..., ...)`` -> a started
  ``pyvmm.Machine``; every machine it made is stopped and released at the
  test's teardown, whatever happened, and a failing test's report carries
  each machine's console output (a section per machine).
* ``pyvmm_snapshot``: a factory, ``pyvmm_snapshot(kernel=..., ready=PATTERN)``
  -> a started clone restored from a snapshot of that machine taken when its
  console matched ``PATTERN``.  The machine boots once per test run: the
  snapshot is kept in the session's base temp directory, which pytest-xdist's
  workers on this host share (its parent in a worker, as pytest-xdist's docs
  have it), taking turns through a file lock so that one of them boots; it is
  removed when the run ends.  Clones are stopped and released at the test's
  teardown, as above.  While a test runs, the next clone of the same snapshot
  is restored (built, not started) on a thread of its own, so the next call
  only starts it (``PreparedClones``).
* the ``kvm`` marker: the test needs a usable ``/dev/kvm`` and is skipped
  (with the reason) where there is none.  Both fixtures imply it.

Firecracker's ``microvm_factory`` fixture is the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

import pytest

if TYPE_CHECKING:
    from pyvmm.api import Machine
    from pyvmm.config.machine import MachineConfig

#: The console output attached to a failing test's report, per machine (its end).
REPORT_BYTES = 64 << 10
#: Seconds ``pyvmm_snapshot`` waits by default for the ready pattern on a booting console.
READY_SECONDS = 60.0
#: Snapshots a process keeps a next clone restored ahead for (the least recently used go).
PREPARED_KEEP = 4
#: The per-run options a clone restored ahead may have: the others claim a host resource
#: when the machine is built (a control socket, gdb's port, a dump file's path), which the
#: clone a test still runs holds.
PREPARABLE_OPTIONS = frozenset({"timeout", "snapshot"})

_MACHINES = pytest.StashKey[list["Machine"]]()


def kvm_unusable() -> str | None:
    """Why this host can't run a pyvmm machine, or None if it can."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"/dev/kvm is not usable here: {exc.strerror}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm (skipped where there is "
                                       "none)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is not None:
        reason = kvm_unusable()
        if reason:
            pytest.skip(reason)


@contextlib.contextmanager
def _machines_of(request: pytest.FixtureRequest) -> Iterator[list[Machine]]:
    """The test's machines (its report shows their consoles), every one stopped at the end."""
    reason = kvm_unusable()
    if reason:
        pytest.skip(reason)
    machines = request.node.stash.setdefault(_MACHINES, [])
    try:
        yield machines
    finally:
        errors = []
        for machine in machines:
            try:
                machine.stop()  # idempotent: another fixture of the test may have stopped it
            except Exception as exc:  # noqa: BLE001 - stop the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def pyvmm_machine(request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    """``pyvmm_machine(**options)`` (or ``(config)``): a started Machine, stopped at teardown."""
    from pyvmm.api import Machine

    with _machines_of(request) as machines:
        def factory(*config: Any, start: bool = True, **options: Any) -> Machine:
            machine = Machine(*config, **options)
            machines.append(machine)
            return machine.start() if start else machine

        yield factory


# -- pyvmm_snapshot: boot once, a restored clone per test --------------------------------------

class SnapshotBootError(Exception):
    """The machine to snapshot did not reach its ready pattern (or the snapshot failed)."""


class SharedSnapshots:
    """The snapshots of one test run, in ``directory``, shared by the processes of the run.

    Each snapshot is made once: under its own lock file (``flock``), the first
    process to need it boots the machine and renames the finished snapshot into
    place; the others wait on the lock and restore from it.  A failed boot leaves
    a ``.failed`` file with its reason, so the others fail at once with it.
    """

    def __init__(self, directory: Path, process: str) -> None:
        self.directory = directory
        #: Who this process is in the failure lines others read ("gw0", "main").
        self.process = process
        self._known: dict[str, Path | str] = {}  # key -> the snapshot, or why its boot failed

    def get(self, key: str, make: Callable[[Path], None]) -> Path:
        """The snapshot ``key``, made first by ``make(directory)`` if no process has made it.
        A test fails in one line when its boot failed, here or in another process."""
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = self._find_or_make(key, make)
        if isinstance(known, str):
            pytest.fail(f"pyvmm_snapshot: {known}", pytrace=False)
        return known

    def _find_or_make(self, key: str, make: Callable[[Path], None]) -> Path | str:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final, failed = self.directory / key, self.directory / f"{key}.failed"
        with _Flock(self.directory / f"{key}.lock"):
            if final.is_dir():
                return final
            if failed.exists():
                return failed.read_text()
            partial = self.directory / f"{key}.partial-{os.getpid()}"
            try:
                make(partial)
                os.rename(partial, final)  # whole, or not there at all
                return final
            except SnapshotBootError as exc:
                reason = str(exc)
            except Exception as exc:
                _write_private(failed, f"the boot failed (in {self.process}): "
                                       f"{type(exc).__name__}: {exc}")
                raise  # the caller's own code (prepare) failed: its traceback tells why
            finally:
                shutil.rmtree(partial, ignore_errors=True)  # after the rename: nothing
            _write_private(failed, f"the boot failed (in {self.process}): {reason}")
        pytest.fail(f"pyvmm_snapshot: {reason}", pytrace=False)

    def remove(self) -> None:
        """Remove the directory (when no process of the run needs it any more)."""
        shutil.rmtree(self.directory, ignore_errors=True)


class _Flock:
    """An exclusive ``flock`` on a 0600 lock file, made if missing, never through a symlink."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> "_Flock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)


def snapshot_key(config: MachineConfig, ready: str | bytes,
                 prepare: Callable[..., object] | None) -> str:
    """The snapshot's name: the kernel's, and a digest of the machine, ``ready`` and ``prepare``
    (by its qualified name and line: the processes of a run import the same code)."""
    from pyvmm.snapshot.save import config_body

    code = getattr(prepare, "__code__", None)
    made_by = None if prepare is None else \
        f"{prepare.__module__}.{prepare.__qualname__}:{getattr(code, 'co_firstlineno', 0)}"
    described = json.dumps({"config": config_body(config), "ready": repr(ready),
                            "prepare": made_by}, sort_keys=True, default=str)
    return (f"{os.path.basename(config.kernel)}-"
            f"{hashlib.sha256(described.encode()).hexdigest()[:16]}")


def boot_to_snapshot(config: MachineConfig, ready: str | bytes, ready_timeout: float,
                     prepare: Callable[[Machine], object] | None, directory: Path,
                     machines: list[Machine]) -> None:
    """Boot ``config`` until its console matches ``ready``, run ``prepare(vm)``, snapshot the
    machine to ``directory`` and stop it.  SnapshotBootError (one line) if it can't."""
    from pyvmm.api import STOP_SECONDS, Machine
    from pyvmm.errors import PyvmmError

    kernel = os.path.basename(config.kernel)
    try:
        vm = Machine(config)
    except PyvmmError as exc:
        raise SnapshotBootError(str(exc)) from None
    machines.append(vm)  # a failing test's report shows its console
    try:
        vm.start()
        try:
            vm.console.expect(ready, ready_timeout)
        except TimeoutError:
            raise SnapshotBootError(f"{kernel}'s console did not match {ready!r} within "
                                    f"{ready_timeout:g} s") from None
        except EOFError:
            raise SnapshotBootError(f"{kernel} stopped before its console matched {ready!r}: "
                                    f"{vm.wait(STOP_SECONDS).reason}") from None
        if prepare is not None:
            prepare(vm)
        vm.snapshot(directory, stop=True)
    except PyvmmError as exc:
        raise SnapshotBootError(str(exc)) from None
    finally:
        vm.stop()


class PreparedClones:
    """The next clone of each snapshot a test took one of, restored ahead: built (RAM mapped,
    KVM state written, disk overlays made) but not started, on a thread of its own while
    the test runs, so the next call only starts it.  One process's (an xdist worker's own).

    The clocks a restore sets run on with the host's from the build (KVM's TSC and kvmclock
    count while no vCPU runs), so a clone started later reads the host's time at its start.
    A restore that failed ahead is forgotten: the next call restores in the foreground,
    where its error is the test's.  ``close`` stops and releases every clone no test took.
    """

    def __init__(self, keep: int = PREPARED_KEEP) -> None:
        self.keep = keep
        #: Clones handed out that had been restored ahead.
        self.taken = 0
        self._ahead: dict[tuple[str, str], _RestoreAhead] = {}  # oldest first

    @staticmethod
    def _key(directory: Path, per_run: dict[str, Any]) -> tuple[str, str]:
        return str(directory), repr(sorted(per_run.items()))

    def take(self, directory: Path, per_run: dict[str, Any]) -> Machine | None:
        """The clone restored ahead for these arguments (waiting for it), or None."""
        ahead = self._ahead.pop(self._key(directory, per_run), None)
        machine = None if ahead is None else ahead.result()
        self.taken += machine is not None
        return machine

    def prepare(self, directory: Path, per_run: dict[str, Any]) -> None:
        """Start restoring a clone ahead (if none is); the oldest beyond ``keep`` are stopped."""
        key = self._key(directory, per_run)
        if key not in self._ahead:
            self._ahead[key] = _RestoreAhead(directory, dict(per_run))
        while len(self._ahead) > self.keep:
            self._ahead.pop(next(iter(self._ahead))).discard()

    def close(self) -> None:
        """Stop the clones restored ahead; then close the spare VM the last clone's close made
        for a next restore (``pyvmm.vmm.spare_vm``): the session ends holding no VM."""
        from pyvmm.vmm import spare_vm

        while self._ahead:
            self._ahead.popitem()[1].discard()
        spare_vm.discard()


class _RestoreAhead:
    """One clone being restored on a thread of its own."""

    def __init__(self, directory: Path, per_run: dict[str, Any]) -> None:
        self._machine: Machine | None = None
        self._thread = threading.Thread(target=self._restore, args=(directory, per_run),
                                        name="pyvmm-restore-ahead", daemon=True)
        self._thread.start()

    def _restore(self, directory: Path, per_run: dict[str, Any]) -> None:
        from pyvmm.api import Machine

        try:
            self._machine = Machine.restore(directory, **per_run)
        except Exception:  # noqa: BLE001 - the foreground restore raises it for the test
            pass

    def result(self) -> Machine | None:
        self._thread.join()  # a restore ends on its own: bounded by its own waits
        return self._machine

    def discard(self) -> None:
        machine = self.result()
        if machine is not None:
            machine.stop()


#: In pytest-xdist's controller: the snapshot directory its local workers share.
_SHARED_DIRECTORY = pytest.StashKey[Path]()
#: The key of ``workerinput`` (what xdist hands a worker) that names that directory.
WORKER_INPUT_KEY = "pyvmm_snapshots"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, starting a worker: a worker on this host (``popen``) shares
    the snapshots in the controller's base temp directory, which is its base temp's parent
    (pytest-xdist's documented pattern); the controller removes them when the run is over.
    A worker elsewhere (``--tx ssh=...``) keeps its own."""
    factory = getattr(node.config, "_tmp_path_factory", None)  # as xdist itself reads it
    if node.gateway.spec.popen and factory is not None:
        directory = node.config.stash[_SHARED_DIRECTORY] = \
            factory.getbasetemp() / "pyvmm-snapshots"
        node.workerinput[WORKER_INPUT_KEY] = str(directory)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In xdist's controller every worker has finished by now: nobody needs the snapshots."""
    directory = session.config.stash.get(_SHARED_DIRECTORY, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pyvmm_shared_snapshots(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSnapshots]:
    """The run's snapshots: the directory pytest-xdist's controller handed this worker, or
    one of this process's own in its base temp directory, removed at the session's end."""
    worker = getattr(request.config, "workerinput", {})
    shared = worker.get(WORKER_INPUT_KEY)
    if shared:
        yield SharedSnapshots(Path(shared), worker["workerid"])
        return
    own = SharedSnapshots(tmp_path_factory.getbasetemp() / "pyvmm-snapshots",
                          worker.get("workerid", "main"))
    try:
        yield own
    finally:
        own.remove()


@pytest.fixture(scope="session")
def pyvmm_prepared_clones(pyvmm_shared_snapshots: SharedSnapshots) -> Iterator[PreparedClones]:
    """This process's clones restored ahead, stopped at the session's end (before the
    snapshots they map are removed: this fixture needs those, so it is torn down first)."""
    prepared = PreparedClones()
    try:
        yield prepared
    finally:
        prepared.close()


@pytest.fixture
def pyvmm_snapshot(request: pytest.FixtureRequest, pyvmm_shared_snapshots: SharedSnapshots,
                   pyvmm_prepared_clones: PreparedClones) -> Iterator[Callable[..., Machine]]:
    """``pyvmm_snapshot(kernel=..., ready=PATTERN, ...)``: a started clone of the machine as it
    was when its console matched PATTERN (booted once per run); stopped at teardown.
    ``prepare_next=False``: don't restore the next clone ahead while this test runs."""
    from pyvmm.api import Machine
    from pyvmm.config.machine import config_from_options
    from pyvmm.snapshot.restore import RESTORE_OPTIONS
    from pyvmm.snapshot.save import PER_RUN_OPTIONS, refuse_unsupported

    with _machines_of(request) as machines:
        def clone(config: MachineConfig | None = None, /, *, ready: str | bytes,
                  ready_timeout: float = READY_SECONDS,
                  prepare: Callable[[Machine], object] | None = None, start: bool = True,
                  prepare_next: bool = True, **options: Any) -> Machine:
            per_run = {name: options.pop(name) for name in RESTORE_OPTIONS if name in options}
            if config is None:
                config = config_from_options(**options)
            elif options:
                raise TypeError("pyvmm_snapshot() takes a MachineConfig or machine options, "
                                "not both")
            booted = dataclasses.replace(config, **PER_RUN_OPTIONS)  # per_run: the clone's
            refuse_unsupported(booted)
            directory = pyvmm_shared_snapshots.get(
                snapshot_key(booted, ready, prepare),
                lambda path: boot_to_snapshot(booted, ready, ready_timeout, prepare, path,
                                              machines))
            if booted.drives:
                per_run.setdefault("snapshot", True)  # each clone writes its own overlay
            # Ahead only when two clones can coexist: none holds a host resource of its own
            # from its build, nor writes the snapshot's disk images itself.
            ahead = set(per_run) <= PREPARABLE_OPTIONS and (
                per_run.get("snapshot") or all(drive.readonly for drive in booted.drives))
            machine = pyvmm_prepared_clones.take(directory, per_run) if ahead else None
            if machine is None:
                machine = Machine.restore(directory, **per_run)
            machines.append(machine)
            if start:
                machine.start()
            if ahead and prepare_next:
                pyvmm_prepared_clones.prepare(directory, per_run)
            return machine

        yield clone


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    machines: list[Machine] = item.stash.get(_MACHINES, [])
    for index, machine in enumerate(machines):
        output = machine.console.output
        cut = len(output) > REPORT_BYTES
        text = output[-REPORT_BYTES:].decode(errors="replace")
        title = f"pyvmm console {index}: {os.path.basename(machine.config.kernel)}"
        report.sections.append((title + (" (its end)" if cut else ""), text))
