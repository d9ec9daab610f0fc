"""The command-line interface: parse arguments, call library functions, nothing else."""
