"""ACPI for the micro-VM: an AML encoder (``aml``) and the tables (``tables``)."""
