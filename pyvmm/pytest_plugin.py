"""pyvmm's pytest plugin (entry point ``pytest11``: ``pyvmm``): guests as test fixtures.

* ``pyvmm_machine``: a factory, ``pyvmm_machine(kernel=..., ...)`` -> a started
  ``pyvmm.Machine``; every machine it made is stopped and released at the
  test's teardown, whatever happened, and a failing test's report carries
  each machine's console output (a section per machine).
* the ``kvm`` marker: the test needs a usable ``/dev/kvm`` and is skipped
  (with the reason) where there is none.  ``pyvmm_machine`` implies it.

Firecracker's ``microvm_factory`` fixture is the model.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

import pytest

if TYPE_CHECKING:
    from pyvmm.api import Machine

#: The console output attached to a failing test's report, per machine (its end).
REPORT_BYTES = 64 << 10

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


@pytest.fixture
def pyvmm_machine(request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    """``pyvmm_machine(**options)`` (or ``(config)``): a started Machine, stopped at teardown."""
    reason = kvm_unusable()
    if reason:
        pytest.skip(reason)
    from pyvmm.api import Machine

    machines: list[Machine] = []
    request.node.stash[_MACHINES] = machines

    def factory(*config: Any, start: bool = True, **options: Any) -> Machine:
        machine = Machine(*config, **options)
        machines.append(machine)
        return machine.start() if start else machine

    try:
        yield factory
    finally:
        errors = []
        for machine in machines:
            try:
                machine.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others, then report
                errors.append(exc)
        if errors:
            raise errors[0]


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
