"""Helpers for running bnlab on torch.distributed: a local multi-process launcher with
bounded failure. Synchronized batch norm itself lives in ``bnlab.norm.layers.sync``."""

from __future__ import annotations

from bnlab.distributed.local import RankFailure, SpawnError, spawn
from bnlab.norm.layers.sync import DistributedError

__all__ = ["DistributedError", "RankFailure", "SpawnError", "spawn"]
