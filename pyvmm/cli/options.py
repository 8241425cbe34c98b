"""The machine's click options, made from ``machine_options()``, and the config they give.

``machine_options`` (the decorator) adds one click option per schema option
to ``pyvmm run`` and ``pyvmm config show``, ``command_options`` those of
command mode to ``pyvmm run``; ``effective_config`` layers the
dataclass defaults, the ``--config`` file and the command line.  Building
the options is a loop over about twenty declarations at import, as cheap as
writing them out was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from pyvmm.config.command import CommandOptions
from pyvmm.config.command import command_options as command_schema
from pyvmm.config.machine import MachineConfig, Option, check_values
from pyvmm.config.machine import machine_options as schema
from pyvmm.config.values import (BadValue, ChoiceKind, CountKind, DirectoryKind, EventsKind,
                                 Kind, PathKind, SecondsKind, SizeKind, SwitchKind)
from pyvmm.errors import ConfigError

if TYPE_CHECKING:
    from pyvmm.config.machine import Origin


class _KindType(click.ParamType):
    """A click type reading text as a ``Kind`` does (``--memory 512M``)."""

    def __init__(self, kind: Kind, metavar: str) -> None:
        self.kind, self.name = kind, metavar

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.kind.from_text(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)


def _click_settings(option: Option) -> dict[str, Any]:
    """click's type and flags for an option: what its usage and errors look like."""
    kind = option.kind
    if isinstance(kind, SwitchKind):  # --x/--no-x: None unless given; a lone --x is a flag
        return {"default": None} if "/" in option.flags[0] else {"is_flag": True}
    if isinstance(kind, EventsKind):
        return {"type": click.Choice(kind.choices), "multiple": True}
    if option.multiple:
        return {"multiple": True}
    if isinstance(kind, ChoiceKind):
        return {"type": click.Choice(kind.choices)}
    if isinstance(kind, DirectoryKind):
        return {"type": click.Path(file_okay=False)}
    if isinstance(kind, PathKind):
        return {"type": click.Path(dir_okay=False)}
    if isinstance(kind, CountKind):
        return {"type": int}
    if isinstance(kind, SecondsKind):
        return {"type": float}
    if isinstance(kind, SizeKind):
        return {"type": _KindType(kind, option.metavar or "SIZE")}
    return {}


def _add_options(command: Callable, options: tuple[Option, ...]) -> Callable:
    for option in reversed(options):
        command = click.option(*option.flags, option.field, help=option.help,
                               metavar=option.metavar, **_click_settings(option))(command)
    return command


def machine_options(command: Callable) -> Callable:
    """The options that describe a machine, shared by ``run`` and ``config show``."""
    command = _add_options(command, schema())
    return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                        help="A machine config file (TOML); options given here "
                             "override it.")(command)


def command_options(command: Callable) -> Callable:
    """Command mode's options (``pyvmm run``): each a keyword of the command."""
    return _add_options(command, command_schema())


def command_options_given(params: dict[str, Any]) -> CommandOptions:
    """The ``CommandOptions`` of the values ``command_options`` put in ``params`` (taken out)."""
    return CommandOptions(**{option.field: params.pop(option.field)
                             for option in command_schema()})


class _CommandLine:
    """Values given on the command line: ``--memory 1M: too small; ...``."""

    def error(self, option: Option, message: str, value: Any = None) -> ConfigError:
        shown = "" if value is None else f" {option.kind.show(value)}"
        return ConfigError(f"{_flag(option)}{shown}: {message}")

    def needs(self, option: Option, other: Option, why: str) -> ConfigError:
        metavar = other.metavar or ("PATH" if isinstance(other.kind, PathKind) else "VALUE")
        return ConfigError(f"{_flag(option)} needs {_flag(other)} {metavar} ({why})")


def _flag(option: Option) -> str:
    """The long flag of an option (``--acpi`` of ``--acpi/--no-acpi``)."""
    return option.flags[0].split("/")[0]


COMMAND_LINE = _CommandLine()


class _Layered:
    """A config file's values under the command line's: errors name where each came from."""

    def __init__(self, config_file: Origin, from_file: set[str]) -> None:
        self.config_file, self.from_file = config_file, from_file

    def _origin(self, option: Option) -> Origin:
        return self.config_file if option.field in self.from_file else COMMAND_LINE

    def error(self, option: Option, message: str, value: Any = None) -> ConfigError:
        return self._origin(option).error(option, message, value)

    def needs(self, option: Option, other: Option, why: str) -> ConfigError:
        return self._origin(option).needs(option, other, why)


def effective_config(ctx: click.Context, params: dict[str, Any]) -> MachineConfig:
    """Defaults, then the config file, then what the command line gave."""
    values: dict[str, Any] = {}
    origin: Origin = COMMAND_LINE
    if params.get("config_file"):
        from pyvmm.config.toml_file import ConfigFile  # only when a file is given (tomllib)

        config_file = ConfigFile(params["config_file"])
        values.update(config_file.values)
    given: dict[str, Any] = {}
    for option in schema():
        value = params.get(option.field)
        if option.multiple:
            if value:
                given[option.field] = option.kind.from_texts(value)
        elif value is not None and \
                ctx.get_parameter_source(option.field) == click.core.ParameterSource.COMMANDLINE:
            given[option.field] = value
    check_values(given, COMMAND_LINE, together=False)
    if values:
        origin = _Layered(config_file, from_file=set(values) - set(given))
    values.update(given)
    if not values.get("kernel"):
        raise ConfigError("no kernel: give --kernel PATH (or kernel = in --config)")
    check_values(values, origin)
    return MachineConfig(**values)


def restore_options_given(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """``run --restore``: the per-run options the command line gave, by their API names.

    A restored machine is the snapshot's: any other machine option (or a config
    file) is a usage error, never silently ignored.
    """
    from pyvmm.snapshot.restore import RESTORE_OPTIONS

    if params.get("config_file"):
        raise ConfigError("--restore: a restored machine is the snapshot's; no --config")
    given: dict[str, Any] = {}
    for option in schema():
        value = params.get(option.field)
        if value is None or value == () or \
                ctx.get_parameter_source(option.field) != click.core.ParameterSource.COMMANDLINE:
            continue
        if option.name not in RESTORE_OPTIONS:
            raise ConfigError(f"{_flag(option)}: a restored machine is the snapshot's; "
                              "--restore takes only " + ", ".join(
                                  _flag(o) for o in schema() if o.name in RESTORE_OPTIONS))
        given[option.name] = value
    return given
