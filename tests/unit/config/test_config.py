"""Size strings and machine option validation."""

from __future__ import annotations

import pytest

from pyvmm.config.machine import MachineConfig
from pyvmm.config.values import parse_size
from pyvmm.errors import ConfigError


@pytest.mark.parametrize("text,expected", [
    ("512M", 512 << 20), ("2G", 2 << 30), ("1GiB", 1 << 30), ("64k", 64 << 10),
    ("768", 768 << 20), (" 1T ", 1 << 40), ("16MB", 16 << 20),
])
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "12X", "M", "-1G", "1.5G", "abc"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size(text)


def test_zero_cpus_refused() -> None:
    with pytest.raises(ConfigError, match="at least one vCPU"):
        MachineConfig(kernel="k", cpus=0)


def test_tiny_memory_refused() -> None:
    with pytest.raises(ConfigError, match="too small"):
        MachineConfig(kernel="k", memory=1 << 20)


def test_bad_timeout_refused() -> None:
    with pytest.raises(ConfigError, match="positive"):
        MachineConfig(kernel="k", timeout=0)
