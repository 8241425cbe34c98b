"""Fixtures that boot real guests under /dev/kvm.

Guest images come from ``images/build.sh`` (into images/out/).  Where /dev/kvm
(pyvmm's pytest plugin: the ``kvm`` marker) or an image is missing the tests
skip with the reason, unless
``PYVMM_REQUIRE_IMAGES=1`` (CI sets it): then a missing image is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images" / "out"


def pytest_collection_modifyitems(config, items) -> None:
    """Every test here boots a guest: the plugin's ``kvm`` marker skips it without /dev/kvm."""
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.kvm)


def image(relative: str) -> Path:
    """Path of a built image; skip (or fail under PYVMM_REQUIRE_IMAGES) if absent."""
    path = IMAGES / relative
    if not path.exists():
        message = f"{path} is not built: run 'bash images/build.sh'"
        if os.environ.get("PYVMM_REQUIRE_IMAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


def pyvmm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyvmm", *args]


def run_pyvmm(*args: str, stdin: bytes | None = b"", timeout: float = 120) -> Run:
    """Run ``pyvmm ARGS`` to completion with ``stdin`` piped in."""
    proc = subprocess.run(pyvmm_command(*args), input=stdin, capture_output=True,
                          timeout=timeout, cwd=REPO)
    return Run(proc.returncode, proc.stdout.decode(errors="replace"),
               proc.stderr.decode(errors="replace"))


@pytest.fixture
def disk(tmp_path) -> Path:
    """A 2 MiB raw disk image of zeros (sparse), for a guest's --drive."""
    path = tmp_path / "disk.img"
    with open(path, "wb") as stream:
        stream.truncate(2 << 20)
    return path


@pytest.fixture
def on_pty():
    """Starts ``pyvmm ARGS...`` on a new pty (a Terminal); afterwards kills it, closes the pty."""
    from tests.integration.terminal import pty_starter

    yield from pty_starter()
