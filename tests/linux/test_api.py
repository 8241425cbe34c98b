"""The library API boots our minimal Linux to /init and talks to its shell (marker linux)."""

from __future__ import annotations

from typing import Callable

import pyvmm
from tests.integration.conftest import image

from .guests import MINIMAL, QUIET

Factory = Callable[..., pyvmm.Machine]


def test_the_api_reaches_init_and_reads_the_console(pyvmm_machine: Factory) -> None:
    vm = pyvmm_machine(kernel=image(MINIMAL.kernel), initrd=image(MINIMAL.initrd),
                       append=MINIMAL.append("echo from-the-guest-$((6*7))"), memory="512M",
                       timeout=200)
    vm.console.expect("pyvmm-init: ok", 180)
    assert vm.console.expect(r"from-the-guest-(\d+)", 60).group(1) == "42"
    outcome = vm.wait(60)
    assert (outcome.status, outcome.kind) == (0, "poweroff"), outcome.reason


def test_the_api_types_into_the_guest_shell(pyvmm_machine: Factory) -> None:
    """Without pyvmm.run the init starts a shell on the console: drive it from Python."""
    vm = pyvmm_machine(kernel=image(MINIMAL.kernel), initrd=image(MINIMAL.initrd),
                       append=f"console=ttyS0 {QUIET}", memory="512M", timeout=200)
    vm.console.expect("pyvmm-init: ok", 180)
    vm.console.expect(r"[#$] ", 60)  # the prompt: the UART is open, typing is not lost
    vm.console.write("echo typed-$((40+2)); poweroff -f\n")
    vm.console.expect("typed-42", 60)
    assert vm.wait(60).status == 0


def test_run_command_runs_one_command_on_the_host_files(tmp_path) -> None:
    """Command mode through the library: streams apart, input passed, the status back."""
    (tmp_path / "data.txt").write_text("from-the-host\n")
    result = pyvmm.run_command(
        ["sh", "-c", f"cat {tmp_path}/data.txt; echo to-stderr >&2; cat; exit 3"],
        input=b"from-python", kernel=image(MINIMAL.kernel), timeout=600)
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"from-the-host\nfrom-python"
    assert result.stderr == b"to-stderr\n"
    assert pyvmm.run_command("test -d /proc/1", kernel=image(MINIMAL.kernel),
                             timeout=600, check=True).returncode == 0
