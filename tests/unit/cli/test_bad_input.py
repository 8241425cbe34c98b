"""Bad input a careless user gives: one line on stderr, status 2, never a traceback or a hang.

Each case names a file that is not what it should be (a device that reads
forever, a FIFO nobody writes, a huge sparse file) or a number out of range.
"""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

from tests.unit.bzimages import make_bzimage
from tests.unit.cli.conftest import assert_one_line_error, invoke, run_with_kernel


@pytest.fixture(autouse=True)
def no_hang():
    """A case that blocks (opening a FIFO) fails after 10 s instead of hanging the suite."""
    def fire(_signum, _frame):
        raise TimeoutError("the command hung")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def odd_files(tmp_path):
    """name -> path of a FIFO, a character device, a 40 GB sparse file, a directory."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as stream:
        stream.truncate(40 << 30)
    directory = tmp_path / "dir"
    directory.mkdir()
    return {"fifo": str(fifo), "dev-zero": "/dev/zero", "sparse-40g": str(sparse),
            "directory": str(directory)}


# (A directory is refused by click itself, with its usage message.)
EXPECTED = {"fifo": "not a regular file", "dev-zero": "not a regular file",
            "sparse-40g": "more than"}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("option", ["--kernel", "--initrd", "--config"])
def test_input_files_that_are_not_regular_or_too_big(tmp_path, odd_files, option,
                                                     kind) -> None:
    result = run_with_kernel(tmp_path, make_bzimage(), option, odd_files[kind])
    assert_one_line_error(result, EXPECTED[kind])


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_drives_that_are_not_files_or_block_devices(tmp_path, odd_files, kind) -> None:
    for spec in (odd_files[kind], odd_files[kind] + ",readonly=on"):
        result = run_with_kernel(tmp_path, make_bzimage(), "--drive", spec)
        assert_one_line_error(result, "disk image")


@pytest.mark.parametrize("args, fragment", [
    (("--cpus", "65"), "no-kvm"),           # within what the platform describes
    (("--cpus", "256"), "at most 255 vCPUs"),
    (("--cpus", "1024"), "at most 255 vCPUs"),
    (("--memory", "100000G"), "more than pyvmm gives a guest"),
    (("--memory", "2T"), "more than pyvmm gives a guest"),
    (("--timeout", "nan"), "positive number of seconds"),
    (("--timeout", "inf"), "positive number of seconds"),
    (("--timeout", "-1"), "positive number of seconds"),
    (("--timeout", "1e300"), "longer than a year"),
    (("--drive", "path=a,path=b"), "path given twice"),
    (("--drive", "file=a,path=b"), "path given twice"),
    (("--vsock", "2"), "CIDs 0, 1 and 2 are reserved"),
    (("--vsock", "4294967295"), "4294967295 means any"),
], ids=lambda value: "_".join(value) if isinstance(value, tuple) else None)
def test_numbers_and_options_out_of_range(tmp_path, args, fragment) -> None:
    status = 4 if fragment == "no-kvm" else 2
    assert_one_line_error(run_with_kernel(tmp_path, make_bzimage(), *args), fragment, status)


def test_a_vsock_without_vhost_vsock(tmp_path, monkeypatch) -> None:
    """Before KVM is opened (the KVM device named here does not exist)."""
    monkeypatch.setattr("pyvmm.vhost.vsock.DEVICE", str(tmp_path / "vhost-vsock"))
    assert_one_line_error(run_with_kernel(tmp_path, make_bzimage(), "--vsock", "3"),
                          "--vsock 3: cannot open")


def test_guest_ram_the_host_cannot_reserve(tmp_path, monkeypatch) -> None:
    from pyvmm.memory import GuestMemory

    def refuse(_ranges, **_options):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(GuestMemory, "anonymous", staticmethod(refuse))
    result = run_with_kernel(tmp_path, make_bzimage(), "--memory", "1T")
    assert_one_line_error(result, "--memory 1T: this host can't reserve")


@pytest.mark.parametrize("path, fragment", [
    ("missing/vmm.sock", "no directory"),
    ("x" * 120, "at most 107 bytes"),
])
def test_control_socket_paths(tmp_path, path, fragment) -> None:
    result = run_with_kernel(tmp_path, make_bzimage(), "--control", str(tmp_path / path))
    assert_one_line_error(result, fragment)


@pytest.mark.parametrize("text, fragment", [
    ("memory = -5\n", "machine.toml:1: memory: -5: too small"),
    ("memory = 10000000\n", "machine.toml:1: memory: 10000000: more than pyvmm gives"),
    ("timeout = nan\n", "machine.toml:1: timeout: nan: must be a positive number"),
    ("timeout = inf\n", "machine.toml:1: timeout: inf: must be a positive number"),
    ("cpus = 300\n", "machine.toml:1: cpus: 300: the platform describes at most 255"),
    ('dump = "x"\ndump_on = "panic"\n', "machine.toml:2: dump_on: 'panic' should be a list"),
    ('\n[[drive]]\npath = "a"\nsize = 3\n', "machine.toml:4: size: unknown drive key"),
])
def test_config_file_values(tmp_path, text, fragment) -> None:
    config = tmp_path / "machine.toml"
    config.write_text(text)
    result = run_with_kernel(tmp_path, make_bzimage(), "--config", str(config))
    assert_one_line_error(result, fragment)
    assert "--memory" not in result.output


# -- pyvmm inspect -----------------------------------------------------------------------

def _dump_with_note(tmp_path, note_json: bytes) -> str:
    """A dump whose PYVMM note holds ``note_json`` verbatim (a crafted dump)."""
    from pyvmm.dump import core
    from pyvmm.dump.state import VcpuRegisters
    from pyvmm.memory import GuestMemory

    path = tmp_path / "crafted.core"
    real_note = core._note

    def crafted(name: bytes, kind: int, desc: bytes) -> bytes:
        return real_note(name, kind, note_json if name == b"PYVMM" else desc)
    core._note = crafted
    try:
        core.write_core(str(path), GuestMemory.from_bytes(1 << 20), [VcpuRegisters(0, {})],
                        {"reason": "x"})
    finally:
        core._note = real_note
    return str(path)


@pytest.mark.parametrize("note", [b"[" * 100000 + b"]" * 100000, b"[1, 2]", b'"text"', b"7",
                                  b'{"reason": ["a"], "status": {}}'],
                         ids=["deep", "list", "string", "number", "odd-values"])
def test_inspect_crafted_pyvmm_note(tmp_path, note) -> None:
    path = _dump_with_note(tmp_path, note)
    for view in (("summary", path), ("summary", path, "--json")):
        result = invoke("inspect", *view)
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output


def test_inspect_strings_min_out_of_range(tmp_path) -> None:
    path = _dump_with_note(tmp_path, b"{}")
    for minimum in ("1000000000000", "0", "-3"):
        assert_one_line_error(invoke("inspect", "strings", path, "--min", minimum), "--min")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse-40g"])
def test_inspect_files_that_are_not_dumps_or_maps(tmp_path, odd_files, kind) -> None:
    dump = _dump_with_note(tmp_path, b"{}")
    if kind != "sparse-40g":  # a sparse file is a (bad) dump: "not an ELF"
        assert_one_line_error(invoke("inspect", "summary", odd_files[kind]),
                              "not a regular file")
    result = invoke("inspect", "dmesg", dump, "--system-map", odd_files[kind])
    assert_one_line_error(result, "not a regular file" if kind != "sparse-40g"
                          else "too large for a System.map")


def test_inspect_a_socket_that_never_answers(tmp_path, monkeypatch) -> None:
    import socket

    from pyvmm.vmm import control

    monkeypatch.setattr(control, "ANSWER_SECONDS", 0.5)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the live dump would go
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepts connections into its backlog, never answers
    try:
        result = invoke("inspect", "summary", str(path))
    finally:
        listener.close()
    assert_one_line_error(result, "no running pyvmm answered")
    assert "within 0.5 s" in result.output
    assert not list(tmp_path.glob("pyvmm-live-*")), "the live dump's directory was left behind"
