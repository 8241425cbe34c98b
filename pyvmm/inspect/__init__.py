"""``pyvmm inspect``: read guest memory dumps (and running VMs) for people and scripts."""
