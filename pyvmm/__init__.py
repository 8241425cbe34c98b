"""pyvmm: a small virtual machine monitor in Python on Linux KVM."""

__version__ = "0.1.0"
__all__ = ["__version__"]
