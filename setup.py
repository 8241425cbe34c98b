"""Only here to hand the cffi build script to setuptools (pyproject has the rest)."""
from setuptools import setup

setup(cffi_modules=["pyvmm/kvm/_build.py:ffibuilder"])
