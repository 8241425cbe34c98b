"""Command mode's initramfs, built on the fly: a newc writer, the kernel modules, the init."""
