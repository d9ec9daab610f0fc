"""Experiment ``bn-learning-rate`` (beyond the seeds): batch norm tolerates larger learning
rates. The same MNIST MLP, with and without batch norm, trained with plain SGD at rates
from 0.03 to 10 (Ioffe & Szegedy 2015, Sec. 3.3: BN makes training resilient to the
parameter scale, so higher rates do not blow up).
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
from bnlab.models.init import tf_init_
from bnlab.models.small import mnist_mlp
from bnlab.report.claims import describe
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Metric, Verdict
from bnlab.report.sweep import sweep_blocks

__all__ = ["LEARNING_RATES", "SPEC", "LearningRateConfig", "build_model", "run"]

LEARNING_RATES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NORMS = {"none": "no batch norm", "bn": "batch norm"}
TRAINS = 0.90  # "trains": test accuracy above this (chance is 10%)


@dataclass(frozen=True)
class LearningRateConfig:
    """One run: the MNIST MLP, with or without batch norm, at one SGD learning rate."""

    seed: int = 0  # initial weights and batch order (the engine sets 0..K-1)
    norm: str = "bn"  # "bn" or "none" (bnlab.norm registry names)
    hidden_units: int = 100  # width of each of the two hidden layers (784-100-100-10)
    learning_rate: float = 0.1  # plain SGD step size (the swept value)
    batch_size: int = 64  # examples per step
    num_steps: int = 600  # SGD steps (about 0.7 epoch)
    eval_every: int = 100  # steps between validation measurements
    num_threads: int = 1  # intra-op threads, fixed so that a run's numbers never depend on
    # how many runs share the machine (bnlab reproduce --jobs)

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=("hidden_units", "batch_size", "num_steps", "eval_every", "num_threads"),
            positive=("learning_rate",),
            choices={"norm": tuple(NORMS)},
        )


def build_model(config: LearningRateConfig) -> torch.nn.Module:
    """The MLP of ``config``: glorot-uniform kernels, zero biases (initialized from the RNG)."""
    return tf_init_(mnist_mlp(config.norm, (config.hidden_units,) * 2))


def run(config: LearningRateConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train at one rate; a diverged run is recorded (``diverged = 1``), not an error."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    outcome = train_classifier(
        model,
        data,
        ctx,
        optimizer=optimizer,
        batches=mnist_batches(data.train, config.batch_size, config.seed),
        num_steps=config.num_steps,
        eval_every=config.eval_every,
        log_every=min(25, config.num_steps),
    )
    return outcome.metrics


def quick(config: LearningRateConfig) -> LearningRateConfig:
    """``--quick``: 20 steps."""
    return dataclasses.replace(config, num_steps=20, eval_every=10)


def _name(norm: str, lr: float) -> str:
    return f"{norm}-lr{lr:g}"


VARIANTS: dict[str, Variant[LearningRateConfig]] = {
    _name(norm, lr): Variant(
        LearningRateConfig(norm=norm, learning_rate=lr), f"{label}, SGD learning rate {lr:g}"
    )
    for norm, label in NORMS.items()
    for lr in LEARNING_RATES
}


def largest_trainable_rate(results: ExperimentResults, norm: str) -> tuple[float | None, bool]:
    """The largest learning rate at which every finished seed of ``norm`` reaches
    :data:`TRAINS` test accuracy (None if none does), and whether every rate has a run."""
    best, complete = None, True
    for lr in LEARNING_RATES:
        values = results.values(_name(norm, lr), "test_accuracy")
        complete &= bool(values)
        if values and all(v > TRAINS for v in values):
            best = lr
    return best, complete


def _tolerates_larger_rates(results: ExperimentResults) -> Verdict:
    with_bn, ok_bn = largest_trainable_rate(results, "bn")
    without, ok_none = largest_trainable_rate(results, "none")
    measured = (
        f"largest rate reaching {TRAINS:.0%} in every seed: batch norm {with_bn}, "
        f"no batch norm {without}"
    )
    if not (ok_bn and ok_none):
        return Verdict(measured + " (some rates have no finished run)", None)
    if with_bn is None:
        return Verdict(measured, False)
    return Verdict(measured, without is None or with_bn > without)


def _higher_where_both_train(results: ExperimentResults) -> Verdict:
    parts, holds, judged = [], True, False
    for lr in LEARNING_RATES:
        bn = results.values(_name("bn", lr), "test_accuracy")
        none = results.values(_name("none", lr), "test_accuracy")
        if not bn or not none or not all(v > TRAINS for v in none):
            continue
        judged = True
        gap = sum(bn) / len(bn) - sum(none) / len(none)
        holds &= gap >= 0
        parts.append(describe(f"lr {lr:g}", [gap], "pct"))
    if not judged:
        return Verdict("no rate at which the network without batch norm trains", None)
    return Verdict("mean(bn) − mean(none): " + "; ".join(parts), holds)


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """Test accuracy against learning rate, one line per norm, and its table."""
    groups = {
        label: {lr: _name(norm, lr) for lr in LEARNING_RATES} for norm, label in NORMS.items()
    }

    def diverged(variant: str) -> str:
        count = sum(v > 0 for v in results.values(variant, "diverged"))
        return f" ({count} diverged)" if count else ""

    return list(
        sweep_blocks(
            results,
            groups,
            "test_accuracy",
            xlabel="SGD learning rate",
            ylabel="test accuracy",
            title="Test accuracy vs SGD learning rate",
            name="accuracy-vs-learning-rate",
            extra=diverged,
        )
    )


CLAIMS = (
    Claim(
        "Batch norm tolerates larger learning rates: the network with batch norm still "
        "trains at rates where the same network without it fails (Ioffe & Szegedy 2015, "
        "Sec. 3.3).",
        _tolerates_larger_rates,
        f"the largest rate at which every seed exceeds {TRAINS:.0%} test accuracy is higher "
        "with batch norm",
    ),
    Claim(
        "At rates where both train, batch norm reaches at least the accuracy of the plain "
        "network in the same number of steps.",
        _higher_where_both_train,
        f"at every rate where no-BN exceeds {TRAINS:.0%} in every seed: mean(bn) ≥ mean(none)",
    ),
)


def _cost_s(config: LearningRateConfig) -> float:
    # Only orders the scheduler's work (longest first); one thread:
    # about 2 ms a step, validation included.
    return 0.3 + 0.002 * config.num_steps


SPEC: ExperimentSpec[LearningRateConfig, Any] = ExperimentSpec(
    name="bn-learning-rate",
    title="batch norm tolerates larger learning rates (beyond the seeds)",
    seed_file="(none: Ioffe & Szegedy 2015, Sec. 3.3)",
    summary=(
        "MNIST MLP 784-100-100-10 (ReLU; glorot-uniform kernels), with batch norm after each "
        "hidden dense layer (no bias) or without (with bias); plain SGD at rates 0.03 to 10, "
        "600 steps of 64; test accuracy in eval mode. A run whose loss turns NaN stops and "
        "counts as diverged (accuracy 10%)."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("test_accuracy", "test acc.", "pct"),
        Metric("test_loss", "test loss", "float"),
        Metric("diverged", "diverged", "int"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            "validation",
            "accuracy",
            "Validation accuracy at rates 0.3 and 3",
            "accuracy",
            variants=("none-lr0.3", "bn-lr0.3", "none-lr3", "bn-lr3"),
            fmt="pct",
        ),
    ),
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=(
        "Plain SGD (no momentum) so that the rate alone sets the step size; the same "
        "600 batches for both networks at a given seed.",
        "Batch norm uses PyTorch's momentum 0.1; its non-finite guard keeps NaN batches out "
        "of the running statistics of a diverging run (the run still counts as diverged).",
    ),
    cost_s=_cost_s,
)
