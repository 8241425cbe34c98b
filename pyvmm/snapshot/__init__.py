"""Snapshots: a running machine saved to a directory, and new machines restored from it.

A snapshot directory holds two files, both created owner-only:

``state.json``
    One JSON object: ``format`` ("pyvmm-snapshot"), ``version`` (``VERSION``),
    ``sha256`` (of ``body`` written canonically: sorted keys, no spaces) and
    ``body``: the machine config, the memory layout, every vCPU's and the VM's
    KVM state (kernel structs as base64, MSRs, CPUID; ``pyvmm/kvm/state.py``)
    and each device's state (``to_state`` of the UART, i8042, RTC and virtio
    transports) and ``disks``: each raw image pyvmm served, by path, size,
    mtime and a sampled fingerprint (``pyvmm/snapshot/disks.py``; the images
    themselves are not copied).  Another version, a checksum that does not
    match, a file cut short, CPU features this host lacks or a disk image that
    changed since are refused with one line.
``memory.raw``
    Guest RAM, its ranges back to back, written straight from guest memory with
    all-zero pages left as holes (a sparse file).  A restore maps it
    ``MAP_PRIVATE``: pages load on first touch and writes stay in the clone.
"""

from pyvmm.errors import PyvmmError

#: The state file's format version; another is refused.
VERSION = 1
STATE_FILE = "state.json"
MEMORY_FILE = "memory.raw"


class SnapshotError(PyvmmError):
    """A snapshot can't be written or read (damaged, another version, a device that can't)."""
