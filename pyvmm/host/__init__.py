"""Small host helpers: fallocate with mode flags, a memory fence, reading input files."""
