"""A full memory barrier for code that shares memory with a running guest.

Python orders its own loads and stores but emits no fence, and x86 may let a
load overtake an earlier store to a different address.  The virtio split ring
depends on exactly that pair being ordered (publish avail_event, then re-read
avail idx; publish used idx, then read used_event or the no-interrupt flag),
so each such place calls :func:`fence` between the two.  It is one ``mfence``
through the compiled host helper module (pyvmm.host._build), which a queue
can load without KVM.
"""

from __future__ import annotations

from pyvmm.host._host_cffi import lib

__all__ = ["fence"]

#: ``__atomic_thread_fence(__ATOMIC_SEQ_CST)``.
fence = lib.pyvmm_fence
