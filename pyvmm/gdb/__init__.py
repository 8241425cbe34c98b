"""A GDB remote-serial-protocol stub: ``pyvmm run --gdb PORT`` lets gdb debug the guest.

``packets`` frames and unframes the protocol's bytes; ``registers`` is the
x86-64 register file gdb sees and its target description; ``debugregs``
packs hardware breakpoints into DR7; ``session`` answers gdb's commands
against an abstract ``target.Target`` (no sockets, no KVM: tested with a
fake); ``server`` is the listening socket and the connection on the event
loop.  The machine as a target (vCPUs, KVM_SET_GUEST_DEBUG) is
``pyvmm.vmm.gdb_target``.
"""
