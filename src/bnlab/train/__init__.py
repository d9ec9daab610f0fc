"""Training loop, evaluation, metrics log, checkpoints and run directories.

The public API is re-exported here; see ``docs/experiments.md`` for how experiments use it.
"""

from __future__ import annotations

from bnlab.train.checkpoint import Checkpoint, capture_rng_state, restore_rng_state
from bnlab.train.env import capture_environment, git_revision
from bnlab.train.errors import NonFiniteLossError, RunConflictError
from bnlab.train.evaluate import eval_mode, evaluate, predict, predict_one_at_a_time
from bnlab.train.io import read_json, torch_save_atomic, write_json_atomic, write_text_atomic
from bnlab.train.loop import FitResult, Hook, HookContext, Trainer, every
from bnlab.train.metrics import MetricsLog, read_metrics
from bnlab.train.progress import progress_bar, progress_enabled
from bnlab.train.rundir import RunDir
from bnlab.train.source import BatchSource

__all__ = [
    "BatchSource",
    "Checkpoint",
    "FitResult",
    "Hook",
    "HookContext",
    "MetricsLog",
    "NonFiniteLossError",
    "RunConflictError",
    "RunDir",
    "Trainer",
    "capture_environment",
    "capture_rng_state",
    "eval_mode",
    "evaluate",
    "every",
    "git_revision",
    "predict",
    "predict_one_at_a_time",
    "progress_bar",
    "progress_enabled",
    "read_json",
    "read_metrics",
    "restore_rng_state",
    "torch_save_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
