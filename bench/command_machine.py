"""Boot a kernel on command mode's machine (the stream ports, no hvc0), without its
initramfs and root share: the hostile tiny guest attacks the ports on any KVM.

    python3 bench/command_machine.py -k KERNEL [-m 64M] [-a CMDLINE] [--timeout S]

``pyvmm run -- CMD`` refuses a kvm_pvm host (Linux user space can't run on
it), but the ports device is the same device whichever guest drives it.  As
command mode: port 0 reads our stdin, ports 1 and 2 write our stdout and
stderr, port 3 is kept (the status); the serial console goes to stdout.  Exits
with the machine's status (124 --timeout, 128+N a signal, 6 a pyvmm error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH comes first

from pyvmm.command.run import Streams  # noqa: E402
from pyvmm.config.machine import MachineConfig  # noqa: E402
from pyvmm.config.values import parse_size  # noqa: E402
from pyvmm.devices.virtio.ports import PortsDevice  # noqa: E402
from pyvmm.vmm.builder import build_machine  # noqa: E402
from pyvmm.vmm.signals import signals_stop  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kernel", required=True)
    parser.add_argument("-m", "--memory", default="64M")
    parser.add_argument("-a", "--append", default="console=ttyS0")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="pyvmm: %(message)s")
    config = MachineConfig(kernel=args.kernel, memory=parse_size(args.memory),
                           cmdline=args.append, timeout=args.timeout, stdio_ports=True,
                           virtio_console=False)
    streams = Streams()
    machine = build_machine(config, None, streams.ports)
    device = machine.virtio_device(PortsDevice)
    assert device is not None  # config.stdio_ports
    streams.start_stdin(device)
    with signals_stop(machine):
        reason = machine.run()
    machine.close_at_exit()
    print(f"\npyvmm: {reason.message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    return reason.status


if __name__ == "__main__":
    os._exit(main())
