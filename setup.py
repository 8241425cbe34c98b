"""Only here to hand the cffi build script to setuptools (pyproject has the rest)."""
from setuptools import setup

# Five compiled modules: the KVM binding, the host helpers a disk or a virtio
# queue needs without KVM (fallocate, a memory fence), the UART fast path's
# C loop (a vCPU's KVM_RUN that answers the console's polls and vhost devices'
# InterruptStatus reads), the kernel's vhost ioctls (vhost-net, vhost-vsock),
# and --net user's frames between passt's socket and the NIC's rings.
setup(cffi_modules=["pyvmm/kvm/_build.py:ffibuilder", "pyvmm/host/_build.py:ffibuilder",
                    "pyvmm/vcpu/_uart_build.py:ffibuilder",
                    "pyvmm/vhost/_build.py:ffibuilder",
                    "pyvmm/vhost/_stream_build.py:ffibuilder"])
