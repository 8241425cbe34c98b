"""Emulated devices. They know nothing of KVM: they see a bus offset and bytes."""
