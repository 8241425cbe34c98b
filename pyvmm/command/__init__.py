"""Command mode (``pyvmm run -k KERNEL -- CMD``) and the initramfs it builds."""
