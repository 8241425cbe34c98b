"""``pyvmm config show``: the effective machine as a rich table, or JSON."""

from __future__ import annotations

import dataclasses
import json

from pyvmm.config import MachineConfig
from pyvmm.virtio_slots import plan_virtio_slots


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
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pyvmm machine", show_header=True)
    table.add_column("setting")
    table.add_column("value")
    table.add_row("kernel", config.kernel)
    table.add_row("initrd", config.initrd or "-")
    table.add_row("command line", config.cmdline)
    table.add_row("memory", f"{config.memory >> 20} MiB")
    table.add_row("vCPUs", str(config.cpus))
    table.add_row("CPU policy", config.cpu_policy)
    table.add_row("ACPI", "on" if config.acpi else "off")
    table.add_row("virtio announced on", config.virtio_announce)
    table.add_row("timeout", f"{config.timeout:g} s" if config.timeout else "none")
    for device in data["virtio_devices"]:
        what = device["kind"] + (f" {device['path']}" if device["path"] else "")
        table.add_row(f"virtio @ {device['base']:#x} irq {device['irq']}", what)
    for drive in config.drives:
        table.add_row(f"drive {drive.path}",
                      f"readonly={'on' if drive.readonly else 'off'} cache={drive.cache}"
                      + (f" serial={drive.serial}" if drive.serial else ""))
    Console().print(table)
