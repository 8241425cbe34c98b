"""cffi build script for the host kernel's vhost interface (API, out-of-line mode).

For ``pyvmm.vhost.kernel``, which vhost-net (``vhost_net.py``) and vhost-vsock
(``vsock.py``) share: the ioctls every ``/dev/vhost-*`` takes, and each
device's own.  The ioctl numbers and the structs they take come from
<linux/vhost.h> (``...``: the compiler fills them in), never counted by hand.
A module of its own: a machine without vhost never loads it, and it needs
nothing of KVM.
"""

from __future__ import annotations

import cffi

CDEF = r"""
#define VHOST_GET_FEATURES ...
#define VHOST_SET_FEATURES ...
#define VHOST_SET_OWNER ...
#define VHOST_SET_MEM_TABLE ...
#define VHOST_SET_VRING_NUM ...
#define VHOST_SET_VRING_ADDR ...
#define VHOST_SET_VRING_BASE ...
#define VHOST_GET_VRING_BASE ...
#define VHOST_SET_VRING_KICK ...
#define VHOST_SET_VRING_CALL ...
#define VHOST_NET_SET_BACKEND ...
#define VHOST_VSOCK_SET_GUEST_CID ...
#define VHOST_VSOCK_SET_RUNNING ...

struct vhost_vring_state { unsigned int index; unsigned int num; ...; };
struct vhost_vring_file { unsigned int index; int fd; ...; };
struct vhost_vring_addr {
    unsigned int index; unsigned int flags;
    uint64_t desc_user_addr; uint64_t used_user_addr; uint64_t avail_user_addr;
    uint64_t log_guest_addr; ...;
};
struct vhost_memory_region {
    uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
    uint64_t flags_padding; ...;
};
struct vhost_memory { uint32_t nregions; uint32_t padding; ...; };

/* ioctl(2) with a pointer argument; returns -errno on failure. */
int pyvmm_vhost_ioctl(int fd, unsigned long request, void *arg);
/* VHOST_SET_MEM_TABLE of n regions (the struct ends in a flexible array); -errno. */
int pyvmm_vhost_set_mem_table(int fd, unsigned int n, struct vhost_memory_region *regions);
"""

SOURCE = r"""
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/vhost.h>

static int pyvmm_vhost_ioctl(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg) < 0 ? -errno : 0;
}

static int pyvmm_vhost_set_mem_table(int fd, unsigned int n,
                                     struct vhost_memory_region *regions)
{
    struct vhost_memory *table = calloc(1, sizeof(*table) + n * sizeof(*regions));
    int ret;
    if (table == NULL)
        return -ENOMEM;
    table->nregions = n;
    memcpy(table->regions, regions, n * sizeof(*regions));
    ret = ioctl(fd, VHOST_SET_MEM_TABLE, table) < 0 ? -errno : 0;
    free(table);
    return ret;
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.vhost._vhost_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
