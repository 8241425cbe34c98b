"""Command mode (``pyvmm run -k KERNEL -- CMD``), the initramfs it builds, and ``pyvmm exec``."""
