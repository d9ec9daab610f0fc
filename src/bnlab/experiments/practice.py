"""The training run the batch-norm-in-practice experiments share (batch size, learning
rate, batch renorm): one classifier trained on MNIST batches, surviving divergence. Their
networks are in ``bnlab.models.small``, the non-i.i.d. sampler in ``bnlab.data.batching``,
the paired claims in ``bnlab.report.claims`` and the sweep figure in ``bnlab.report.sweep``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import TrainBatches
from bnlab.data.datasets import Split
from bnlab.experiments.base import RunContext
from bnlab.norm.layers.safe import NonFiniteBatchWarning, refusals
from bnlab.train import Hook, Trainer, evaluate, every
from bnlab.train.errors import NonFiniteLossError

__all__ = ["TrainOutcome", "mnist_batches", "train_classifier"]


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`train_classifier` did: the trained model and its final metrics."""

    model: nn.Module
    metrics: dict[str, float]
    diverged: bool


def train_classifier(
    model: nn.Module,
    data: Any,
    ctx: RunContext,
    *,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    num_steps: int,
    eval_every: int,
    log_every: int = 25,
) -> TrainOutcome:
    """Train with softmax cross-entropy, logging validation accuracy and loss every
    ``eval_every`` steps (tag ``validation``); then test accuracy and loss in eval mode.

    A run whose loss turns NaN/Inf does not fail: training stops there, the outcome is
    ``diverged`` and its accuracy is chance (0.1), so a sweep shows where a setting breaks.
    ``refused_batches`` counts the batches bnlab's norm layers kept out of their running
    statistics because they were not finite (summed over layers).
    """
    val = data.validation

    def validation() -> dict[str, float]:
        return evaluate(model, val.images, val.labels, F.cross_entropy, batch_size=2000)

    trainer = Trainer(
        model,
        optimizer,
        F.cross_entropy,
        batches,
        num_steps,
        run=ctx.run,
        hooks=(Hook("validation", lambda _: validation(), every(eval_every)),),
        checkpoint_every=max(log_every, num_steps // 4 // log_every * log_every),
        log_every=log_every,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    try:
        with warnings.catch_warnings():
            # A diverging run makes every norm layer refuse every batch; they are counted
            # below (refused_batches) instead of printed.
            warnings.simplefilter("ignore", NonFiniteBatchWarning)
            fit = trainer.fit()
        elapsed, diverged = fit.elapsed_s, False
    except NonFiniteLossError:
        elapsed, diverged = math.nan, True
    test = data.test
    if diverged:
        final = {"test_accuracy": 0.1, "test_loss": math.inf}
    else:
        result = evaluate(model, test.images, test.labels, F.cross_entropy, batch_size=2000)
        final = {"test_accuracy": result["accuracy"], "test_loss": result["loss"]}
        trainer.metrics.append({"phase": "train", "tag": "test", "step": num_steps, **result})
        trainer.metrics.flush()
    refused = sum(entry["count"] for entry in refusals(model).values())
    metrics = {
        **final,
        "diverged": float(diverged),
        "refused_batches": float(refused),
        "train_time_s": elapsed,
    }
    return TrainOutcome(model, metrics, diverged)


def mnist_batches(split: Split, batch_size: int, seed: int) -> TrainBatches:
    """TF-style shuffled epochs over ``split`` (seeded)."""
    return TrainBatches(split, batch_size, seed=seed)
