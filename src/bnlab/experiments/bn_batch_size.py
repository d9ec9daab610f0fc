"""Experiment ``bn-batch-size`` (beyond the seeds): batch norm against group norm as the batch
shrinks. BN's statistics come from the batch, so at 2 examples they are noise and the
population statistics used at inference no longer match training; group norm's come from
each example alone (Wu & He 2018, Fig. 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from bnlab.experiments.base import (
    ExperimentSpec,
    RunContext,
    Variant,
    load_mnist_data,
    require,
)
from bnlab.experiments.practice import mnist_batches, train_classifier
from bnlab.models.small import mnist_mlp
from bnlab.report.claims import paired_check
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Metric
from bnlab.report.sweep import sweep_blocks

__all__ = ["BATCH_SIZES", "SPEC", "BatchSizeConfig", "build_model", "run"]

BATCH_SIZES = (2, 4, 8, 16, 32, 64)
NORMS = {"bn": "batch norm", "gn": "group norm"}


@dataclass(frozen=True)
class BatchSizeConfig:
    """One run: an MNIST MLP with one norm, trained at one batch size."""

    seed: int = 0  # initial weights and batch order (the engine sets 0..K-1)
    norm: str = "bn"  # bnlab.norm registry name: "bn" or "gn"
    num_groups: int = 10  # group norm: 10 groups of 10 units in each 100-unit layer
    hidden_units: int = 100  # width of each of the two hidden layers (784-100-100-10)
    batch_size: int = 32  # examples per training batch (the swept value)
    examples: int = 16_384  # training examples seen; steps = examples // batch_size, so
    # every batch size gets the same data, as Wu & He train every batch size equal epochs
    learning_rate: float = 1e-3  # Adam step size, the same at every batch size
    bn_momentum: float = 0.1  # PyTorch's default weight of the new batch in the EMA
    evals: int = 8  # validation measurements over the run (equally spaced in examples)
    fused_adam: bool = True  # Adam(fused=True): one kernel per step, the same update rule
    num_threads: int = 1  # intra-op threads, fixed so that a run's numbers never depend on
    # how many runs share the machine (bnlab reproduce --jobs)

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=(
                "num_groups",
                "hidden_units",
                "batch_size",
                "examples",
                "evals",
                "num_threads",
            ),
            positive=("learning_rate",),
            fraction=("bn_momentum",),
            choices={"norm": tuple(NORMS)},
        )
        if self.hidden_units % self.num_groups:
            raise ValueError(
                f"num_groups ({self.num_groups}) must divide hidden_units ({self.hidden_units})"
            )
        if self.examples < self.batch_size:
            raise ValueError(
                f"examples ({self.examples}) must be at least one batch ({self.batch_size})"
            )

    @property
    def num_steps(self) -> int:
        """Optimizer steps: ``examples // batch_size``."""
        return self.examples // self.batch_size


def build_model(config: BatchSizeConfig) -> torch.nn.Module:
    """The MLP of ``config`` (initialized from the current torch RNG)."""
    options: dict[str, Any] = (
        {"num_groups": config.num_groups}
        if config.norm == "gn"
        else {"momentum": config.bn_momentum}
    )
    return mnist_mlp(config.norm, (config.hidden_units,) * 2, options)


def run(config: BatchSizeConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train one norm at one batch size; final test accuracy in eval mode."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, fused=config.fused_adam
    )
    batches = mnist_batches(data.train, config.batch_size, config.seed)
    steps = config.num_steps
    outcome = train_classifier(
        model,
        data,
        ctx,
        optimizer=optimizer,
        batches=batches,
        num_steps=steps,
        eval_every=max(1, steps // config.evals),
        log_every=max(1, min(25, steps // 4)),
    )
    return {**outcome.metrics, "num_steps": float(steps)}


def quick(config: BatchSizeConfig) -> BatchSizeConfig:
    """``--quick``: 256 examples per batch size."""
    return dataclasses.replace(config, examples=max(256, config.batch_size * 4), evals=2)


# -- variants: norm x batch size --------------------------------------------------------
VARIANTS: dict[str, Variant[BatchSizeConfig]] = {
    f"{norm}-b{bs}": Variant(
        BatchSizeConfig(norm=norm, batch_size=bs),
        f"{label}, batches of {bs} ({16_384 // bs} Adam steps)",
    )
    for norm, label in NORMS.items()
    for bs in BATCH_SIZES
}


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """Test accuracy against batch size, one line per norm, and its table."""
    groups = {
        label: {float(bs): f"{norm}-b{bs}" for bs in BATCH_SIZES} for norm, label in NORMS.items()
    }
    return list(
        sweep_blocks(
            results,
            groups,
            "test_accuracy",
            xlabel="batch size",
            ylabel="test accuracy",
            title="Test accuracy vs batch size",
            name="accuracy-vs-batch-size",
        )
    )


CLAIMS = (
    Claim(
        "Batch norm degrades at very small batches: with 2 examples per batch its test "
        "accuracy falls well below its accuracy at 32 (Wu & He 2018, Fig. 1).",
        paired_check("bn-b32", "bn-b2", lambda gap: gap > 0.05),
        "every seed: accuracy(bn, batch 32) − accuracy(bn, batch 2) > 5 points",
    ),
    Claim(
        "Group norm does not depend on the batch: its accuracy at batch 2 is about its "
        "accuracy at batch 32.",
        paired_check("gn-b32", "gn-b2", lambda gap: abs(gap) < 0.02),
        "every seed: |accuracy(gn, batch 32) − accuracy(gn, batch 2)| < 2 points",
    ),
    Claim(
        "At batch 2 group norm beats batch norm by a wide margin.",
        paired_check("gn-b2", "bn-b2", lambda gap: gap > 0.05),
        "every seed: accuracy(gn, batch 2) − accuracy(bn, batch 2) > 5 points",
    ),
)


def _cost_s(config: BatchSizeConfig) -> float:
    # Only orders the scheduler's work (longest first); one thread:
    # about 1.1 ms a step, validation included (bn-b2: 8,192 steps in 9 s).
    return 0.3 + 0.0011 * config.num_steps


SPEC: ExperimentSpec[BatchSizeConfig, Any] = ExperimentSpec(
    name="bn-batch-size",
    title="batch norm vs group norm as the batch shrinks (beyond the seeds)",
    seed_file="(none: Wu & He 2018)",
    summary=(
        "MNIST MLP 784-100-100-10 (ReLU, no bias before the norm) with batch norm or group "
        "norm (10 groups of 10 units), Adam 1e-3, trained on 16,384 examples at batch sizes "
        "2 to 64 (so 8,192 to 256 steps); test accuracy in eval mode (population statistics "
        "for BN)."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("test_accuracy", "test acc.", "pct"),
        Metric("test_loss", "test loss", "float"),
        Metric("num_steps", "steps", "int"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=(
        "Wu & He measure ResNet-50 on ImageNet; this is the same effect on an MNIST MLP, "
        "sized to run on a laptop CPU in minutes.",
        "Every batch size sees the same 16,384 training examples with the same Adam rate; "
        "the batch-2 runs take the most steps.",
        "Batch norm uses PyTorch's momentum 0.1 for its running statistics; the norm "
        "layers run torch's kernels (backend 'native'), numerically equal to bnlab's others.",
    ),
    cost_s=_cost_s,
)
