"""Machine config files: parsing, errors with file:line, and CLI precedence."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pyvmm.cli.main import main
from pyvmm.config.toml_file import load_config_file
from pyvmm.errors import ConfigError

FULL = """\
kernel = "bzImage"
initrd = "initrd.img"
append = "console=ttyS0 quiet"
memory = "1G"
cpus = 2
timeout = 30
cpu = "compat"
virtio_console = false

[[drive]]
path = "a.img"

[[drive]]
path = "/abs/b.img"
readonly = true
cache = "none"
serial = "data1"
"""


def write(tmp_path, text: str):
    path = tmp_path / "machine.toml"
    path.write_text(text)
    return path


def show(*args: str) -> dict:
    result = CliRunner().invoke(main, ["config", "show", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_every_option_from_a_file(tmp_path) -> None:
    values = load_config_file(str(write(tmp_path, FULL)))
    assert values["kernel"] == str(tmp_path / "bzImage")  # relative to the file
    assert values["memory"] == 1 << 30 and values["cpus"] == 2 and values["timeout"] == 30
    assert values["virtio_console"] is False and values["cpu_policy"] == "compat"
    first, second = values["drives"]
    assert first.path == str(tmp_path / "a.img") and not first.readonly
    assert second.path == "/abs/b.img" and second.readonly and second.cache == "none"
    assert second.serial == "data1"


def test_memory_as_mib_number(tmp_path) -> None:
    assert load_config_file(str(write(tmp_path, "memory = 256\n")))["memory"] == 256 << 20


@pytest.mark.parametrize("text, message", [
    ('kernel = "k"\nmemory = "12X"\n', r"machine.toml:2: memory: '12X' is not a size"),
    ('cpus = 0\n', r"machine.toml:1: cpus: 0"),
    ('cpus = "two"\n', r"machine.toml:1: cpus: 'two' should be a number"),
    ('\n\nfrobnicate = 1\n', r"machine.toml:3: frobnicate: unknown key"),
    ('cpu = "fast"\n', r"cpu: 'fast'"),
    ('virtio_console = 1\n', r"virtio_console: 1 should be true or false"),
    ('[[drive]]\nreadonly = true\n', r"drive 1: path is missing"),
    ('[[drive]]\npath = "a"\n[[drive]]\npath = "b"\ncache = "fast"\n',
     r"machine.toml:5: cache: 'fast'"),
    ('kernel = \n', r"not valid TOML"),
    # tomllib recurses per level: a RecursionError traceback before.
    ('kernel = ' + '[' * 3000 + ']' * 3000 + '\n', r"nested too deeply"),
    ('kernel = ' + '{a=' * 3000 + '1' + '}' * 3000 + '\n', r"nested too deeply"),
    # Deep but parseable: a wrong type, not a crash in our checks.
    ('drive = ' + '[' * 200 + ']' * 200 + '\n', r"drive"),
])
def test_errors_name_the_key_and_line(tmp_path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_file(str(write(tmp_path, text)))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config_file("/nonexistent/machine.toml")


def test_command_line_overrides_the_file(tmp_path) -> None:
    path = write(tmp_path, FULL)
    from_file = show("--config", str(path))
    assert from_file["memory"] == 1 << 30 and from_file["cpus"] == 2
    assert [d["path"] for d in from_file["drives"]] == [str(tmp_path / "a.img"), "/abs/b.img"]
    overridden = show("--config", str(path), "-m", "256M", "--cpus", "1",
                      "--drive", "c.img", "--virtio-console")
    assert overridden["memory"] == 256 << 20 and overridden["cpus"] == 1
    assert [d["path"] for d in overridden["drives"]] == ["c.img"]
    assert overridden["virtio_console"] is True
    assert overridden["cmdline"] == "console=ttyS0 quiet"  # not given: from the file


def test_show_lists_virtio_slots() -> None:
    data = show("-k", "bzImage", "-d", "a.img", "-d", "b.img")
    assert [(d["kind"], d["irq"]) for d in data["virtio_devices"]] == \
        [("block", 5), ("block", 6), ("console", 7)]


def test_show_table() -> None:
    result = CliRunner().invoke(main, ["config", "show", "-k", "bzImage", "-m", "1G"])
    assert result.exit_code == 0 and "1G" in result.output


def test_run_with_bad_config_file_is_one_line(tmp_path) -> None:
    path = write(tmp_path, 'kernel = "k"\nmemory = "12X"\n')
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == \
        f"pyvmm: error: {path}:2: memory: '12X' is not a size (use e.g. 512M or 2G)"


def test_no_kernel_anywhere() -> None:
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and "no kernel" in result.output


def test_a_comma_in_a_drive_or_share_path_is_written_twice() -> None:
    data = show("-k", "bzImage", "-d", "path=/data/a,,b.img,readonly=on",
                "--share", "/srv/x,,y,,,tag=t", "-d", "/data/c,,d.img")
    assert [(d["path"], d["readonly"]) for d in data["drives"]] == \
        [("/data/a,b.img", True), ("/data/c,d.img", False)]
    assert [(s["path"], s["tag"]) for s in data["shares"]] == [("/srv/x,y,", "t")]


def test_split_options_reads_back_what_escape_option_wrote() -> None:
    from pyvmm.config.tables import escape_option, split_options

    for value in ("a,b", ",", ",,", "a,", ",a", "plain", ""):
        assert split_options(f"{escape_option(value)},ro") == [value, "ro"]
