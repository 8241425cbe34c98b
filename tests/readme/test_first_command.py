"""The README's first command, as a newcomer pastes it: on a fresh clone, system PATH only.

The command is read from the README itself (the first command of its first
``sh`` block), so the two can't drift.  It runs in a clone of this
repository's HEAD (commit what you want tested) with ``PATH`` holding only
the system's directories, no ``PYTHONPATH`` or virtual environment: it must
install pyvmm into the clone's ``.venv`` and boot the demo to user space.
Where /dev/kvm is not hardware KVM the demo boots in scripts/rig.py, as the
first command says; only one rig may run at a time, and this test starts one.

Slow (a minute or two: a venv, pip, and on such a host a rig boot), so it runs
only when ``PYVMM_SLOW=1`` (CI's .ci/run sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.linux.conftest import why_no_hardware_kvm

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def readme_commands(text: str) -> list[str]:
    """The commands of the README's first ``sh`` block: paragraphs, comments left out."""
    block = re.search(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "the README has no ```sh block"
    commands = []
    for paragraph in block.group(1).split("\n\n"):
        lines = [line for line in paragraph.splitlines() if line.strip()
                 and not line.lstrip().startswith("#")]
        if lines:
            commands.append("\n".join(lines))
    return commands


def test_the_readme_commands_are_found() -> None:
    first, second = readme_commands((REPO / "README.md").read_text())[:2]
    assert "scripts/install.sh" in first and "scripts/demo.py" in first
    assert second == "bash scripts/test.sh"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PYVMM_SLOW") != "1",
                    reason="slow (installs a fresh clone, boots the demo, in the rig where KVM "
                           "is not hardware): set PYVMM_SLOW=1, as CI (.ci/run) does")
@pytest.mark.skipif(shutil.which("git") is None, reason="no git to clone the checkout with")
@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is None,
                    reason="the first command installs Debian packages: root or sudo")
def test_the_first_command_boots_the_demo_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "pyvmm"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    first = readme_commands((clone / "README.md").read_text())[0]
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", first], cwd=clone, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"status {proc.returncode}\n{err[-3000:]}\n{out[-3000:]}"
    assert (clone / ".venv" / "bin" / "pyvmm").exists()
    # The system's own Python made the venv, and each install step said how long it took.
    assert "home = /usr/bin\n" in (clone / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(r"^install: creating \.venv with /usr/bin/python3: done in [\d.]+ s$", err,
                     re.MULTILINE)
    assert "demo: building the guest's initramfs in Python" in err
    if why_no_hardware_kvm():
        notice = [line for line in err.splitlines() if "the demo runs in the rig" in line]
        assert len(notice) == 1 and err.index(notice[0]) < err.index("rig: booting")
    banner = out.index("Linux version 6.")
    marker = out.index("pyvmm-init: ok", banner)                  # /init runs: user space
    assert re.search(r"^Linux \S+ 6\.\S+ .* x86_64 GNU/Linux\r?$", out[marker:], re.MULTILINE)
    assert "pyvmm-init: exit 0" in out[marker:]
    print(f"the first command took {seconds:.0f} s")
