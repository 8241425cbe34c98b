"""The host's identity leaves in the guest's CPUID: brand string, cache and TLB descriptors."""

from __future__ import annotations

import struct

from pyvmm.arch.x86_64.cpuid import (CpuidEntry, adjust_cpuid, host_leaves,
                                     with_host_leaves)
from pyvmm.host.cpuid import host_cpuid

BRAND = b"AMD EPYC-Rome Processor".ljust(48, b"\0")
#: An AMD host as the rig's QEMU presents it (values from its CPUID).
HOST = {
    (0, 0): (0xD, 0x68747541, 0x444D4163, 0x69746E65),
    (2, 0): (0, 0, 0, 0),
    (4, 0): (0, 0, 0, 0),
    (0x80000000, 0): (0x8000001E, 0x68747541, 0x444D4163, 0x69746E65),
    **{(0x80000002 + i, 0): struct.unpack_from("<4I", BRAND, 16 * i) for i in range(3)},
    (0x80000005, 0): (0x1FF01FF, 0x1FF01FF, 0x20080140, 0x20080140),
    (0x80000006, 0): (0, 0x42004200, 0x2006140, 0x808140),
    (0x8000001D, 0): (0x121, 0x1C0003F, 0x3F, 1),
    (0x8000001D, 1): (0x122, 0x1C0003F, 0x3F, 1),
    (0x8000001D, 2): (0x143, 0x1C0003F, 0x3FF, 2),
    (0x8000001D, 3): (0x163, 0x3C0003F, 0x3FFF, 6),
}


def read(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    return HOST.get((leaf, subleaf), (0, 0, 0, 0))


def kvm_table() -> list[CpuidEntry]:
    """KVM_GET_SUPPORTED_CPUID on Linux 6.1 there: the brand string and 0x80000005 empty."""
    return [CpuidEntry(0, 0, 0, 0xD, 0, 0, 0), CpuidEntry(1, 0, 0, 0x830F10, 0, 0, 0),
            CpuidEntry(4, 0, 1, 0, 0, 0, 0),
            CpuidEntry(0x80000000, 0, 0, 0x80000021, 0, 0, 0),
            *[CpuidEntry(0x80000002 + i, 0, 0, 0, 0, 0, 0) for i in range(4)],
            CpuidEntry(0x80000006, 0, 0, 0, 0x42004200, 0x2006140, 0x808140),
            *[CpuidEntry(0x8000001D, i, 1, *read(0x8000001D, i)) for i in range(5)]]


def brand(entries: list[CpuidEntry]) -> bytes:
    by_leaf = {(e.function, e.index): e for e in entries}
    return b"".join(struct.pack("<4I", *(getattr(by_leaf[(0x80000002 + i, 0)], r)
                                          for r in ("eax", "ebx", "ecx", "edx")))
                    for i in range(3)).rstrip(b"\0")


def test_the_brand_string_and_l1_leaf_come_from_the_host() -> None:
    table = with_host_leaves(kvm_table(), host_leaves(read))
    assert brand(table) == b"AMD EPYC-Rome Processor"
    by_leaf = {(e.function, e.index): e for e in table}
    assert (by_leaf[(0x80000005, 0)].ecx, by_leaf[(0x80000005, 0)].edx) == \
        (0x20080140, 0x20080140)
    # Every leaf KVM had stays, once; the cache list ends with its null entry, as KVM's did.
    assert len(table) == len({(e.function, e.index) for e in table})
    assert [e.index for e in table if e.function == 0x8000001D] == [0, 1, 2, 3, 4]
    assert all(e.flags == 1 for e in table if e.function in (4, 0x8000001D))
    assert by_leaf[(1, 0)].eax == 0x830F10 and by_leaf[(0x80000000, 0)].eax == 0x80000021


def test_leaves_beyond_the_tables_range_or_the_hosts_are_left_out() -> None:
    host = host_leaves(read)
    assert 0x80000007 not in {e.function for e in host}
    assert not [e for e in host if e.function == 0x8000001D and e.index > 4]
    # A KVM range ending before 0x80000005: nothing past it is added.
    short = [CpuidEntry(0, 0, 0, 1, 0, 0, 0), CpuidEntry(0x80000000, 0, 0, 0x80000004, 0, 0, 0)]
    assert {e.function for e in with_host_leaves(short, host)} == {
        0, 0x80000000, 0x80000002, 0x80000003, 0x80000004}
    # A host whose extended range stops at 0x80000004 offers no cache leaves past it.
    old = dict(HOST)
    old[(0x80000000, 0)] = (0x80000004, 0, 0, 0)
    assert max(e.function for e in host_leaves(lambda leaf, sub: old.get((leaf, sub), (0,) * 4))) \
        == 0x80000004


def test_a_reader_that_never_ends_the_cache_list_is_bounded() -> None:
    endless = host_leaves(lambda leaf, sub: (0xD, 0, 0, 0) if leaf == 0 else (0x21, 0, 0, 0))
    assert len([e for e in endless if e.function == 4]) == 16


def test_leaf_4_is_fitted_to_the_vcpus() -> None:
    # An Intel L3 shared by 32 threads of a 16-core package, L1d by 2.
    l3 = 0x163 | (31 << 14) | (15 << 26)
    l1 = 0x121 | (1 << 14) | (15 << 26)
    table = [CpuidEntry(4, 0, 1, l1, 0, 0, 0), CpuidEntry(4, 1, 1, l3, 0, 0, 0),
             CpuidEntry(4, 2, 1, 0, 0, 0, 0)]
    for cpus, sharing_l3, sharing_l1 in ((1, 0, 0), (2, 1, 1), (3, 3, 1), (4, 3, 1)):
        adjusted = adjust_cpuid(table, 0, cpus, "host")
        assert [e.eax >> 26 for e in adjusted] == [cpus - 1, cpus - 1, 0]
        assert (adjusted[1].eax >> 14) & 0xFFF == sharing_l3
        assert (adjusted[0].eax >> 14) & 0xFFF == sharing_l1
        assert [e.eax & 0x3FFF for e in adjusted] == [0x121, 0x163, 0]


def test_this_hosts_cpuid_reads_its_vendor_and_brand() -> None:
    reader = host_cpuid()
    assert reader is not None
    vendor = struct.pack("<3I", *(reader(0, 0)[i] for i in (1, 3, 2)))
    assert vendor in (b"AuthenticAMD", b"GenuineIntel", b"HygonGenuine")
    host = host_leaves(reader)
    model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name"))
    if any(e.function == 0x80000002 for e in host):
        assert brand(host).decode().strip() == model
