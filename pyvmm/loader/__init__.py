"""Kernel and initrd loaders: they take guest memory and bytes, and return where things went."""
