"""Only here to hand the cffi build script to setuptools (pyproject has the rest)."""
from setuptools import setup

# Six compiled modules: the KVM binding, the host helpers a disk or a virtio
# queue needs without KVM (fallocate, a memory fence), the raw disk's request
# loop (virtio-blk requests between its rings and the image), the UART fast
# path's C loop (a vCPU's KVM_RUN that answers the console's polls and vhost
# devices' InterruptStatus reads), the kernel's vhost ioctls (vhost-net,
# vhost-vsock), and --net user's frames between passt's socket and the NIC's
# rings.  The two ring-serving loops share their virtqueue C
# (pyvmm/host/_virtq_source.py).
setup(cffi_modules=["pyvmm/kvm/_build.py:ffibuilder", "pyvmm/host/_build.py:ffibuilder",
                    "pyvmm/host/_disk_build.py:ffibuilder",
                    "pyvmm/vcpu/_uart_build.py:ffibuilder",
                    "pyvmm/vhost/_build.py:ffibuilder",
                    "pyvmm/vhost/_stream_build.py:ffibuilder"])
