"""Loads pyvmm's pytest plugin, unless its ``pytest11`` entry point already did.

Once pyvmm is installed (``pip install -e .``), pytest finds the plugin
through the entry point; loading it here as well would register it twice,
which pytest refuses.  From a checkout that is not installed (or installed
before the plugin existed), this is what loads it.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points


def plugin_autoloaded() -> bool:
    """Whether pytest loads pyvmm's plugin by itself (its entry point is installed)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(point.value == "pyvmm.pytest_plugin"
               for point in entry_points(group="pytest11"))


#: pytester: tests/integration/test_api.py checks what a failing test's report shows.
pytest_plugins = ["pytester"] + ([] if plugin_autoloaded() else ["pyvmm.pytest_plugin"])
