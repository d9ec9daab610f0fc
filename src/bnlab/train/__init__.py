"""Training loop, evaluation, metrics log, checkpoints and activation probes."""
