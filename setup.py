"""Only here to hand the cffi build script to setuptools (pyproject has the rest)."""
from setuptools import setup

# Two compiled modules: the KVM binding, and the host helpers a disk or a virtio
# queue needs without KVM (fallocate, a memory fence).
setup(cffi_modules=["pyvmm/kvm/_build.py:ffibuilder", "pyvmm/host/_build.py:ffibuilder"])
