"""What a machine is, as values: the option schema, its value kinds, the
[[drive]]/[[share]] tables and the TOML file."""
