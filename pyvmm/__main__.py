"""``python -m pyvmm`` runs the CLI."""

from pyvmm.cli.main import entry

entry()
