"""The KVM binding: one class per file descriptor (system, VM, vCPU) and exits as data."""
