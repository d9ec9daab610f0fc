"""Data: IDX / CIFAR-10 / image readers, offline-first sources, integrity checks and
in-memory batching."""
