"""pyvmm's version, here at the ground floor so any layer may name it (a snapshot's
state file records it) without importing the package's face, ``pyvmm/__init__.py``."""

VERSION = "0.1.0"
