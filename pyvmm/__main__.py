"""``python -m pyvmm`` runs the CLI."""

from pyvmm.cli import entry

entry()
