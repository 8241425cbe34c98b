"""Only here to hand the cffi build script to setuptools (pyproject has the rest)."""
from setuptools import setup

# Four compiled modules: the KVM binding, the host helpers a disk or a virtio
# queue needs without KVM (fallocate, a memory fence), the UART fast path's
# C loop (a vCPU's KVM_RUN that answers the console's polls and vhost devices'
# InterruptStatus reads), and the kernel's vhost ioctls (vhost-net, vhost-vsock).
setup(cffi_modules=["pyvmm/kvm/_build.py:ffibuilder", "pyvmm/host/_build.py:ffibuilder",
                    "pyvmm/vcpu/_uart_build.py:ffibuilder",
                    "pyvmm/vhost/_build.py:ffibuilder"])
