"""The command line: the click commands (run, config show, inspect), their options
generated from the machine schema, and error reporting for people."""
