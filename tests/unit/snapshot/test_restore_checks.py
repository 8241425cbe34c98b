"""What a restore refuses before it touches KVM: options that change the machine, a CPU
that lacks what the guest saw, a config of another shape."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pyvmm.arch.x86_64.cpuid import CpuidEntry
from pyvmm.config.machine import MachineConfig, config_from_options
from pyvmm.errors import ConfigError
from pyvmm.snapshot import SnapshotError
from pyvmm.snapshot.cpu import missing_features
from pyvmm.snapshot.restore import restore_config
from pyvmm.snapshot.save import config_body, refuse_unsupported

SAVED = config_body(MachineConfig(kernel="/k", memory=64 << 20, timeout=5, control="/tmp/c"))


def test_the_saved_config_drops_per_run_options_and_takes_new_ones() -> None:
    assert SAVED["timeout"] is None and SAVED["control"] is None
    config = restore_config(SAVED, {"timeout": "2.5", "control": "/tmp/x.sock"})
    assert (config.memory, config.timeout, config.control) == (64 << 20, 2.5, "/tmp/x.sock")


@pytest.mark.parametrize("name", ["memory", "cpus", "kernel", "append"])
def test_options_that_change_the_machine_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: a restored machine is the snapshot's"):
        restore_config(SAVED, {name: "1"})


def test_a_config_of_another_shape_is_refused() -> None:
    with pytest.raises(SnapshotError, match="does not match"):
        restore_config({**SAVED, "new_option": 1}, {})
    partial = dict(SAVED)
    partial.pop("memory")
    with pytest.raises(SnapshotError, match="does not match"):
        restore_config(partial, {})


LEAF1 = CpuidEntry(1, 0, 0, 0x800F12, 0, 0x80002001, 0x078BFBFF)
LEAF7 = CpuidEntry(7, 0, 1, 0, 0x209, 0, 0)


def test_features_the_host_lacks_are_named() -> None:
    saved = [LEAF1, dataclasses.replace(LEAF7, ebx=LEAF7.ebx | 1 << 5)]  # AVX2
    assert missing_features(saved, [LEAF1, LEAF7], 0, 1, False) == ["CPUID 0x7.0 ebx bit 5"]


def test_what_pyvmm_adds_and_what_the_guest_toggles_are_not_missing() -> None:
    # The hypervisor bit and TSC deadline come from pyvmm; OSXSAVE from the guest's CR4.
    saved = [dataclasses.replace(LEAF1, ecx=LEAF1.ecx | 1 << 31 | 1 << 24 | 1 << 27), LEAF7]
    assert missing_features(saved, [LEAF1, LEAF7], 0, 1, True) == []
    assert missing_features(saved, [LEAF1, LEAF7], 0, 1, False) == ["CPUID 0x1.0 ecx bit 24"]


def test_drives_and_nics_come_back_as_tables_with_absolute_paths() -> None:
    saved = config_body(config_from_options(kernel="/k", drives=["path=disk.img,cache=none"],
                                            nets=["user,hostfwd=tcp::8022-:22"]))
    config = restore_config(saved, {"snapshot": True})
    assert config.drives[0].path == os.path.abspath("disk.img")
    assert config.drives[0].cache == "none" and not config.drives[0].snapshot
    assert config.nets[0].hostfwd == ("tcp::8022-:22",) and not config.snapshot


def test_a_share_or_command_mode_is_refused_before_the_guest_pauses(tmp_path) -> None:
    with pytest.raises(SnapshotError, match="--share can't be snapshotted: virtiofsd keeps"):
        refuse_unsupported(config_from_options(kernel="/k", shares=[str(tmp_path)]))
    with pytest.raises(SnapshotError, match="command mode"):
        refuse_unsupported(MachineConfig(kernel="/k", stdio_ports=True))
