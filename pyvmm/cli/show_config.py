"""``pyvmm config show``: the effective machine as a rich table, or JSON.

The table has a row per option of ``machine_options()``, named by its config
file key, so it shows every option there is; then the virtio slots.
"""

from __future__ import annotations

import dataclasses
import json

from pyvmm.config.machine import MachineConfig, machine_options
from pyvmm.config.tables import TablesKind
from pyvmm.vmm.virtio_slots import plan_virtio_slots


def config_as_dict(config: MachineConfig) -> dict:
    """The machine, with the virtio slots pyvmm will give it, as plain data."""
    data = dataclasses.asdict(config)
    data["virtio_devices"] = [
        {"kind": slot.kind, "base": slot.base, "irq": slot.irq,
         "path": slot.drive.path if slot.drive else None}
        for slot in plan_virtio_slots(config)]
    return data


def show_config(config: MachineConfig, as_json: bool) -> None:
    data = config_as_dict(config)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console  # rich costs ~50 ms: only for the table
    from rich.table import Table

    table = Table(title="pyvmm machine", show_header=True)
    table.add_column("option")
    table.add_column("value")
    for option in machine_options():
        value = getattr(config, option.field)
        if isinstance(option.kind, TablesKind):
            for index, entry in enumerate(value):
                table.add_row(f"{option.toml} {index}", option.kind.show((entry,)))
            if not value:
                table.add_row(option.toml, "-")
        else:
            table.add_row(option.toml, option.kind.show(value))
    for device in data["virtio_devices"]:
        what = device["kind"] + (f" {device['path']}" if device["path"] else "")
        table.add_row(f"virtio @ {device['base']:#x} irq {device['irq']}", what)
    Console().print(table)
