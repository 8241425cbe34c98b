"""One schema: every machine option is a click option, a TOML key, a row of
``config show`` and a keyword of ``config_from_options``, with errors worded
for where the value came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click
import pytest
from click.testing import CliRunner

from pyvmm.cli.main import main
from pyvmm.config.machine import MachineConfig, config_from_options, machine_options
from pyvmm.config.tables import DriveConfig, ShareConfig, TablesKind, table_keys
from pyvmm.config.toml_file import load_config_file
from pyvmm.errors import ConfigError

OPTIONS = machine_options()
VALUES = [option for option in OPTIONS if not isinstance(option.kind, TablesKind)]
TABLES = {option.toml: option for option in OPTIONS if isinstance(option.kind, TablesKind)}


def table_of(option: Any) -> type:
    """The dataclass of a ``[[table]]`` option's entries."""
    assert isinstance(option.kind, TablesKind)
    return option.kind.table

#: A good and a bad TOML value of each (non-table) option.  A new option fails
#: test_every_option_has_cases until it is added here, and so gets its tests.
CASES = {
    "kernel": ('"k"', "1"), "initrd": ('"i"', "true"), "append": ('"quiet"', "3"),
    "memory": ('"1G"', '"12X"'), "cpus": ("2", "0"), "timeout": ("5", "-1"),
    "cpu": ('"host"', '"fast"'), "virtio_console": ("false", '"yes"'),
    "virtio_announce": ('"acpi"', '"radio"'), "acpi": ("false", "1"),
    "dump": ('"d.core"', "[]"), "dump_on": ('["exit"]', '["later"]'),
    "control": ('"c.sock"', "2"), "emulation_assist": ('"on"', '"maybe"'),
    "gdb": ('"1234"', '"host:port"'), "gdb_wait": ("true", '"yes"'),
    "rng": ("true", '"yes"'), "snapshot": ("true", "2"), "vsock": ("3", "2"),
}
#: A bad value of each key of the [[drive]], [[share]] and [[net]] tables.
BAD_TABLE_VALUE = {"path": "1", "readonly": '"yes"', "cache": '"fast"',
                   "serial": '"' + "s" * 21 + '"', "tag": '""', "format": '"qcow3"',
                   "backend": '"qemu"', "snapshot": '"yes"', "overlay": "1", "type": '"slirp"',
                   "hostfwd": '["tcp::80"]', "mac": '"ff:ff:ff:ff:ff:ff"', "ifname": '"a/b"',
                   "vhost": '"maybe"'}
#: The key each table needs, with a good value.
REQUIRED = {"drive": ("path", '"a"'), "share": ("path", '"a"'), "net": ("type", '"user"')}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "machine.toml"
    path.write_text(text)
    return str(path)


def test_every_option_has_cases() -> None:
    assert set(CASES) == {option.toml for option in VALUES}
    assert set(TABLES) == {"drive", "share", "net"}
    for option in TABLES.values():
        assert set(BAD_TABLE_VALUE) >= set(table_keys(table_of(option)))


@pytest.mark.parametrize("command", ["run", ("config", "show")])
def test_every_option_is_a_click_option(command) -> None:
    group = cast(click.Group, main)
    cmd = group.commands["run"] if command == "run" else \
        cast(click.Group, group.commands["config"]).commands["show"]
    params = {param.name: param for param in cmd.params}
    for option in OPTIONS:
        assert option.field in params, option
        flags = set(params[option.field].opts) | set(params[option.field].secondary_opts)
        assert set(option.flags[0].split("/")) | set(option.flags[1:]) <= flags
        param = params[option.field]
        assert isinstance(param, click.Option) and param.help == option.help
        long_flag = option.flags[0].split("/")[0]
        assert option.toml == long_flag.removeprefix("--").replace("-", "_")  # as README says


def test_every_option_is_a_toml_key(tmp_path) -> None:
    text = "".join(f"{key} = {good}\n" for key, (good, _) in CASES.items())
    text += '[[drive]]\npath = "a.img"\n[[share]]\npath = "src"\n[[net]]\ntype = "user"\n'
    values = load_config_file(write(tmp_path, text))
    assert set(values) == {option.field for option in OPTIONS}


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_key_has_file_line_errors(tmp_path, key) -> None:
    path = write(tmp_path, f'# a machine\n\n{key} = {CASES[key][1]}\n')
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert str(error.value).startswith(f"{path}:3: {key}: "), error.value
    assert "--" not in str(error.value)  # worded for the file, not the command line


@pytest.mark.parametrize("table, key", [(t, k) for t, o in TABLES.items()
                                        for k in table_keys(table_of(o))] +
                         [("drive", "size"), ("share", "mode"), ("net", "mode")])
def test_table_keys_have_file_line_errors(tmp_path, table, key) -> None:
    bad = BAD_TABLE_VALUE.get(key, "1")
    required, good = REQUIRED[table]
    rest = "" if key == required else f'\n{required} = {good}'
    path = write(tmp_path, f'kernel = "k"\n[[{table}]]\n{required} = {good}\n\n[[{table}]]\n'
                           f'{key} = {bad}{rest}\n')
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert str(error.value).startswith(f"{path}:6: {key}: "), error.value
    if key in ("size", "mode"):
        assert f"unknown {table} key" in str(error.value)


def test_inline_tables_are_found_at_their_line(tmp_path) -> None:
    path = write(tmp_path, 'kernel = "k"\ndrive = [{ path = "a", size = 3 }]\n')
    with pytest.raises(ConfigError, match=r"machine.toml:2: size: unknown drive key"):
        load_config_file(path)


def test_a_table_without_its_path(tmp_path) -> None:
    path = write(tmp_path, '[[share]]\npath = "a"\n[[share]]\ntag = "x"\n')
    with pytest.raises(ConfigError, match=r"machine.toml:3: share 2: path is missing"):
        load_config_file(path)


def test_shares_from_a_file(tmp_path) -> None:
    path = write(tmp_path, '[[share]]\npath = "src"\n[[share]]\npath = "/data"\n'
                           'tag = "data"\nreadonly = true\n')
    assert load_config_file(path)["shares"] == (
        ShareConfig(str(tmp_path / "src"), "share0"), ShareConfig("/data", "data", True))


def test_duplicate_tags_in_a_file_name_the_file(tmp_path) -> None:
    path = write(tmp_path, 'kernel = "k"\n[[share]]\npath = "a"\n[[share]]\npath = "b"\n'
                           'tag = "share0"\n')
    result = CliRunner().invoke(main, ["config", "show", "--config", path])
    assert result.exit_code == 2
    assert f"{path}:2: share: the tag 'share0' is given twice" in result.output


def test_dump_on_from_a_file_with_dump_on_the_command_line(tmp_path) -> None:
    path = write(tmp_path, 'kernel = "k"\ndump_on = ["exit"]\n')
    result = CliRunner().invoke(main, ["config", "show", "--json", "--config", path])
    assert result.exit_code == 2 and f"{path}:2: dump_on: needs dump" in result.output
    result = CliRunner().invoke(main, ["config", "show", "--json", "--config", path,
                                       "--dump", "x.core"])
    assert result.exit_code == 0 and json.loads(result.output)["dump_on"] == ["exit"]


def test_config_show_lists_every_option() -> None:
    result = CliRunner().invoke(main, ["config", "show", "-k", "k", "--json"])
    assert result.exit_code == 0
    assert {option.field for option in OPTIONS} <= set(json.loads(result.output))
    table = CliRunner().invoke(main, ["config", "show", "-k", "k"],
                               env={"COLUMNS": "200"}).output
    for option in OPTIONS:
        assert f" {option.toml} " in table, option.toml


def test_config_from_options() -> None:
    config = config_from_options(kernel=Path("/k"), memory="1G", cpus=2, timeout=3,
                                 append="quiet", cpu="compat", dump="d", dump_on=["exit"],
                                 drives=[{"path": "a.img", "readonly": True},
                                         DriveConfig("b.img"), "c.img,cache=none"],
                                 shares=["/srv,ro", {"path": "/data", "tag": "data"}])
    assert config.kernel == "/k" and config.memory == 1 << 30 and config.cpus == 2
    assert config.cmdline == "quiet" and config.cpu_policy == "compat"
    assert config.timeout == 3.0 and config.dump_on == ("exit",)
    assert config.drives == (DriveConfig("a.img", readonly=True), DriveConfig("b.img"),
                             DriveConfig("c.img", cache="none"))
    assert config.shares == (ShareConfig("/srv", "share0", True),
                             ShareConfig("/data", "data", False))
    assert config_from_options(kernel="k", memory=256 << 20).memory == 256 << 20
    assert config_from_options(kernel="k", initrd=None).initrd is None
    assert config_from_options(kernel="k") == MachineConfig(kernel="k")
    # A path object is a file, never a spec: its commas stay in the name.
    assert config_from_options(kernel="k", drives=[Path("/d/a,b.img")],
                               shares=Path("/srv")).drives == (DriveConfig("/d/a,b.img"),)
    assert config_from_options(kernel="k", shares=Path("/srv")).shares == (
        ShareConfig("/srv", "share0", False),)


@pytest.mark.parametrize("options, message", [
    ({"memory": 1 << 20}, "memory=1048576: too small; pyvmm needs at least 16M"),
    ({"memory": "12X"}, "memory='12X': '12X' is not a size"),
    ({"memroy": "1G"}, "unknown keyword argument memroy= (known: kernel, initrd"),
    ({"cmdline": "x"}, "unknown keyword argument cmdline="),
    ({"cpus": 0}, "cpus=0: a machine needs at least one vCPU"),
    ({"cpus": "two"}, "cpus='two': 'two' is not a whole number"),
    ({"vsock": 2}, "vsock=2: CIDs 0, 1 and 2 are reserved"),
    ({"vsock": 2**32 - 1}, "vsock=4294967295: a CID is 32 bits and 4294967295 means any"),
    ({"acpi": "maybe"}, "acpi='maybe'"),
    ({"emulation_assist": "maybe"}, "emulation_assist='maybe': choose one of auto, on, off"),
    ({"timeout": float("nan")}, "timeout=nan: must be a positive number"),
    ({"dump_on": ["exit"]}, "dump_on= needs dump="),
    ({"drives": [{"path": "a", "cache": "fast"}]}, "entry 1: cache='fast'"),
    ({"drives": [{"path": "a", "size": 3}]}, "entry 1: unknown key 'size'"),
    ({"drives": [{"readonly": True}]}, "entry 1: path is missing"),
    ({"shares": [{"path": "/a", "tag": "t"}, {"path": "/b", "tag": "t"}]},
     "shares=: the tag 't' is given twice"),
])
def test_config_from_options_errors(options, message) -> None:
    with pytest.raises(ConfigError) as error:
        config_from_options(kernel="k", **options)
    assert message in str(error.value)
    assert "--" not in str(error.value)


def test_config_from_options_needs_a_kernel() -> None:
    with pytest.raises(ConfigError, match="no kernel: give kernel=PATH"):
        config_from_options(memory="1G")
