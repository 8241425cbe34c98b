"""Small host helpers: fallocate with mode flags, a memory fence, the CPUID instruction, reading
input files."""
