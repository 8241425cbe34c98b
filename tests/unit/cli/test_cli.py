"""The CLI in-process with click's CliRunner: help, version, bad input."""

from __future__ import annotations

import os
import re

import pytest

from pyvmm import __version__
from tests.unit.cli.conftest import assert_one_line_error, invoke, run_with_kernel


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args) -> None:
    result = invoke(*args)
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_run_help_documents_exit_statuses() -> None:
    text = invoke("run", "--help").output
    for fragment in ("124", "debug-exit", "Ctrl-A x"):
        assert fragment in text


def test_kernel_is_required() -> None:
    result = invoke("run")
    assert result.exit_code == 2
    assert "--kernel" in result.output


def test_bad_memory_size() -> None:
    result = invoke("run", "--kernel", "k", "--memory", "12X")
    assert result.exit_code == 2
    assert "'12X' is not a size" in result.output


def test_zero_cpus(tmp_path) -> None:
    result = invoke("run", "--kernel", str(tmp_path / "k"), "--cpus", "0")
    assert result.exit_code == 2
    assert "at least one vCPU" in result.output
    assert "Traceback" not in result.output


def test_missing_kernel(tmp_path) -> None:
    result = invoke("run", "--kernel", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert re.search(r"error: kernel '.*nope' not found", result.output)
    assert len(result.output.strip().splitlines()) == 1


def test_missing_initrd(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    result = invoke("run", "--kernel", str(kernel), "--initrd", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "initrd" in result.output and "not found" in result.output


def test_empty_kernel(tmp_path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"")
    result = invoke("run", "--kernel", str(kernel))
    assert result.exit_code == 2
    assert "empty" in result.output


# -- bad kernels, initrds and sizes: one line, status 2, found before KVM opens ----------

from tests.unit.bzimages import make_bzimage  # noqa: E402


@pytest.mark.parametrize("data, fragment", [
    (make_bzimage()[:0x150], "truncated"),
    (b"MZ" + b"\0" * 4096, "not a bzImage"),
    (make_bzimage(version=0x0209), "protocol"),
    (make_bzimage(xloadflags=0), "64-bit"),
    (b"\x7fELF" + b"\0" * 60, "ELF"),
], ids=["truncated", "not-bzimage", "old-protocol", "not-64-bit", "corrupt-elf"])
def test_bad_kernels(tmp_path, data: bytes, fragment: str) -> None:
    assert_one_line_error(run_with_kernel(tmp_path, data), fragment)


def test_kernel_needs_more_memory_than_given(tmp_path) -> None:
    data = make_bzimage(init_size=64 << 20)
    assert_one_line_error(run_with_kernel(tmp_path, data, "--memory", "32M"), "memory")


def test_memory_too_small(tmp_path) -> None:
    assert_one_line_error(run_with_kernel(tmp_path, make_bzimage(), "--memory", "1M"),
                          "too small")


def test_initrd_larger_than_ram(tmp_path) -> None:
    initrd = tmp_path / "initrd"
    with open(initrd, "wb") as stream:
        stream.truncate(40 << 20)  # sparse: 40 MiB of zeros
    result = run_with_kernel(tmp_path, make_bzimage(), "--memory", "32M",
                             "--initrd", str(initrd))
    assert_one_line_error(result, "initrd")


def test_cmdline_longer_than_kernel_accepts(tmp_path) -> None:
    result = run_with_kernel(tmp_path, make_bzimage(cmdline_size=255), "--append", "x" * 300)
    assert_one_line_error(result, "command line")


def test_missing_kvm_device(tmp_path) -> None:
    result = run_with_kernel(tmp_path, make_bzimage())
    assert_one_line_error(result, "no-kvm", status=4)
    assert "kvm" in result.output.lower()


def test_plain_run_imports_neither_rich_nor_elftools() -> None:
    """Startup: `pyvmm run` loads only what a plain boot needs (no --share: no vhost-user)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from pyvmm.cli.main import main\n"
            "CliRunner().invoke(main, ['run', '--kernel', '/nonexistent'])\n"
            "import pyvmm.vmm.builder\n"
            "from pyvmm.vmm.shares import Shares\n"
            "Shares([]).start()\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'elftools')\n"
            "               or m in ('pyvmm.vhost.frontend', 'pyvmm.vhost.virtiofsd', 'subprocess'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_dump_on_without_dump(tmp_path) -> None:
    result = run_with_kernel(tmp_path, make_bzimage(), "--dump-on", "exit")
    assert_one_line_error(result, "--dump-on needs --dump PATH")


def test_control_socket_path_taken(tmp_path) -> None:
    taken = tmp_path / "vmm.sock"
    taken.write_text("")
    result = run_with_kernel(tmp_path, make_bzimage(), "--control", str(taken))
    assert_one_line_error(result, "already exists")


def test_more_virtio_devices_than_irq_lines(tmp_path) -> None:
    drives = [arg for i in range(9) for arg in ("--drive", str(tmp_path / f"d{i}.img"))]
    result = run_with_kernel(tmp_path, make_bzimage(), *drives)
    assert_one_line_error(result, "10 virtio devices asked for")


def test_inspect_a_socket_nobody_answers(tmp_path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()  # the file stays, nobody listens
    result = invoke("inspect", "summary", str(path))
    assert_one_line_error(result, "no running pyvmm answers")


@pytest.mark.parametrize("make", ["devnull", "fifo"])
def test_dump_onto_a_device_or_fifo_is_refused_before_the_guest(tmp_path, make: str) -> None:
    if make == "devnull":
        target = "/dev/null"
    else:
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    before = os.lstat(target)
    result = run_with_kernel(tmp_path, make_bzimage(), "--dump", target)
    assert_one_line_error(result, "a dump replaces only a regular file")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


@pytest.mark.parametrize("extra, fragment", [
    (["--rw"], "--rw: only for command mode"),
    (["--modules", "/lib/modules"], "--modules: only for command mode"),
    (["--user", "nobody"], "--user: only for command mode"),
    (["--rw", "--modules", "/m"], "--rw, --modules: only for command mode"),
    (["--"], "nothing after --"),
    (["-a", "quiet", "--"], "nothing after --"),
], ids=["rw", "modules", "user", "both", "bare-dashes", "dashes-after-append"])
def test_command_mode_options_without_a_command_are_one_line(tmp_path, extra, fragment) -> None:
    """They were ignored, and a bare -- booted a plain VM."""
    assert_one_line_error(run_with_kernel(tmp_path, make_bzimage(), *extra), fragment)


def test_double_dash_as_an_option_value_is_not_a_bare_double_dash(tmp_path) -> None:
    result = run_with_kernel(tmp_path, make_bzimage(), "-a", "--")
    assert "nothing after --" not in result.output
    assert_one_line_error(result, "no-kvm", status=4)
