"""cffi build script for the host helpers that are not KVM (API, out-of-line mode).

``fallocate(2)`` with its mode flags (``os.posix_fallocate`` has none), for a
disk's discard and write-zeroes, and a full memory fence for code sharing
memory with a guest (the virtio rings).  They are a module of their own, apart
from the KVM binding: a disk image or a virtio queue needs neither /dev/kvm
nor <linux/kvm.h>.  The CPUID instruction itself, for the leaves the guest
sees as the host's (its brand string, cache and TLB descriptors).  The flags come from <linux/falloc.h> (``...``: the
compiler fills them in).
"""

from __future__ import annotations

import cffi

CDEF = r"""
#define FALLOC_FL_KEEP_SIZE ...
#define FALLOC_FL_PUNCH_HOLE ...
#define FALLOC_FL_ZERO_RANGE ...
/* fallocate(2); returns -errno. */
int pyvmm_fallocate(int fd, int mode, long long offset, long long length);

/* A full memory barrier (mfence on x86): Python has none, and the virtio
   ring protocol needs one where a store must be seen before a later load. */
void pyvmm_fence(void);

/* Write the pages of buf[0:len] that hold a non-zero byte to fd at offset + their
   place, straight from buf (guest RAM: no copy); all-zero pages stay holes.  Returns
   the bytes written, or -errno. */
long long pyvmm_write_nonzero_pages(int fd, const char *buf, unsigned long long len,
                                    long long offset, unsigned long long page);

/* The CPUID instruction on this CPU: regs = {eax, ebx, ecx, edx} of leaf/subleaf. */
void pyvmm_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int regs[4]);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <unistd.h>
#include <cpuid.h>

static int pyvmm_fallocate(int fd, int mode, long long offset, long long length)
{
    return fallocate(fd, mode, offset, length) < 0 ? -errno : 0;
}

static void pyvmm_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static int pyvmm_all_zero(const char *p, unsigned long long n)
{
    unsigned long long i, acc = 0;
    for (i = 0; i + 8 <= n; i += 8) {
        unsigned long long word;
        memcpy(&word, p + i, 8);
        acc |= word;
    }
    for (; i < n; i++)
        acc |= (unsigned char)p[i];
    return acc == 0;
}

static long long pyvmm_write_nonzero_pages(int fd, const char *buf, unsigned long long len,
                                           long long offset, unsigned long long page)
{
    unsigned long long pos = 0, written = 0;
    while (pos < len) {
        unsigned long long end = pos, step;
        while (end < len) {  /* the run of non-zero pages from pos */
            step = len - end < page ? len - end : page;
            if (pyvmm_all_zero(buf + end, step))
                break;
            end += step;
        }
        while (pos < end) {
            ssize_t done = pwrite(fd, buf + pos, end - pos, offset + (long long)pos);
            if (done < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            pos += (unsigned long long)done;
            written += (unsigned long long)done;
        }
        if (pos < len)  /* the zero page that ended the run */
            pos += len - pos < page ? len - pos : page;
    }
    return (long long)written;
}

static void pyvmm_cpuid(unsigned int leaf, unsigned int subleaf, unsigned int regs[4])
{
    __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("pyvmm.host._host_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
