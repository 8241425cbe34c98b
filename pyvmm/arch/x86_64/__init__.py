"""x86-64 specifics: memory layout, registers, page tables, boot parameters, CPUID."""
