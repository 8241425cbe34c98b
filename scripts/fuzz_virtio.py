"""The long run of the virtio fuzzer (the test suite runs a bounded one).

    python3 scripts/fuzz_virtio.py [--examples 20000] [--seed N] [--kind block ...]

Drives the block, console, ports (command mode's streams), entropy, net (a stand-in link;
frames with their vnet header and offloads, as a tap gives them; vhost-net's registers),
virtio-fs (config space and transport, a stand-in back end) and vsock (config space,
transport and its event queue, a stand-in vhost-vsock) devices through their virtio-mmio transport
with hypothesis-generated hostile drivers (tests/unit/devices/virtio/virtio_fuzzing.py) and
prints how many runs, notifications ("rings"; "live rings" reached a device
not in DEVICE_NEEDS_RESET) and used chains it went through, and the first failure if any (hypothesis shrinks it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.unit.devices.virtio.virtio_fuzzing import KINDS, run_one, runs_of  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kind", action="append", choices=KINDS,
                        help="fuzz only this device (again for more; default: all)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the devices log every broken ring they see
    totals = {"runs": 0, "operations": 0, "rings": 0, "live rings": 0, "chains": 0,
              "needs-reset": 0, "output bytes": 0}
    by_kind = {kind: 0 for kind in KINDS}

    @settings(max_examples=args.examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(run=runs_of(tuple(args.kind or KINDS)))
    def fuzz(run) -> None:
        kind, ops = run
        world = run_one(kind, ops)
        totals["runs"] += 1
        totals["operations"] += len(ops)
        totals["rings"] += world.rings
        totals["live rings"] += world.live_rings
        totals["chains"] += world.chains
        totals["needs-reset"] += world.resets_needed
        totals["output bytes"] += world.output_bytes
        by_kind[kind] += world.rings

    if args.seed is not None:
        fuzz = seed(args.seed)(fuzz)
    start = time.monotonic()
    failed = False
    try:
        fuzz()
    except Exception as exc:  # noqa: BLE001 - reported: the falsifying example is printed
        failed = True
        print(f"FAILED: {type(exc).__name__}: {exc}")
        for inner in getattr(exc, "exceptions", ()):  # what a flaky failure saw first
            print(f"  first seen: {type(inner).__name__}: {inner}")
    print(f"{time.monotonic() - start:.0f} s ({time.process_time():.0f} s CPU): " +
          ", ".join(f"{value} {name}" for name, value in totals.items()) +
          "; rings by device: " + ", ".join(f"{kind} {n}" for kind, n in by_kind.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
