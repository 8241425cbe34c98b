"""``pyvmm check``: what this host can run, one line per capability (like kvm-ok).

Exit 0 when a Linux guest reaches user space here, 1 when not (the
``missing`` lines say why and how to get what is missing).
"""

from __future__ import annotations

import json
import sys

import click

from pyvmm.check.capabilities import judge, linux_runs
from pyvmm.check.facts import gather


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
def check(as_json: bool) -> None:
    """Say what this host can run: /dev/kvm, hardware or software KVM, back ends, modules.

    \b
    Exit status: 0 a Linux guest can run here; 1 it can't (see the missing lines).
    """
    capabilities = judge(gather())
    runs = linux_runs(capabilities)
    if as_json:
        click.echo(json.dumps({"linux_guests": runs,
                               "capabilities": [c.as_dict() for c in capabilities]}))
    else:
        for capability in capabilities:
            click.echo(capability.line())
        click.echo("pyvmm check: Linux guests " + ("run here" if runs else
                   "can't reach user space here (see the missing lines above)"))
    sys.exit(0 if runs else 1)
