"""Limits that the machine's parts impose and that the option schema checks too.

Each is declared once, here, at the bottom of the import graph: the schema
(``pyvmm.config``) refuses a value beyond one with a line naming the option,
and the part that sets the limit (the platform, a device's config space) is
built from the same number, without either importing the other.
"""

from __future__ import annotations

#: Most vCPUs the platform can describe: xAPIC IDs (CPUID leaf 1 EBX[31:24], the
#: MADT's local APIC entries) are 8 bits, and 0xFF is the broadcast ID.
MAX_CPUS = 255
#: Bytes of a virtio-fs tag: the device's config space holds ``tag[36]``
#: (virtio 1.2, 5.11.4), UTF-8, NUL-padded.
FS_TAG_BYTES = 36
#: Characters a virtio-fs tag may not hold: the guest reads the tag up to a NUL,
#: and a comma separates a ``--share`` spec's options.
FS_TAG_FORBIDDEN = "\0,"
