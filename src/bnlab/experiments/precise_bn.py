"""Experiment ``precise-bn`` (beyond the seeds): precise population statistics against the
EMA on seed 000's deep CNN. After training, the running statistics are recomputed as exact
averages over K training batches (seed 001's remark that a true average beats the moving
one) and single-image test accuracy is measured with each set of statistics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnlab.data import TrainBatches
from bnlab.experiments import deep_cnn
from bnlab.experiments.base import (
    ExperimentSpec,
    RunContext,
    Variant,
    load_mnist_data,
    require,
)
from bnlab.models.small import BACKEND
from bnlab.norm.layers.modules import BATCH_NORM_TYPES
from bnlab.norm.tools.precise import precise_bn
from bnlab.report.claims import describe
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Metric, Paragraph, Table, Verdict
from bnlab.report.stats import format_summary, summarize
from bnlab.train import Hook, Trainer, evaluate, every
from bnlab.train.evaluate import predict, predict_one_at_a_time

__all__ = ["SPEC", "PreciseBNConfig", "build_model", "run"]

STATS_FILE = "bn_statistics.json"


@dataclass(frozen=True)
class PreciseBNConfig:
    """One run: train seed 000's BN network, then compare EMA and precise statistics."""

    seed: int = 0  # initial weights and batch order (the engine sets 0..K-1)
    num_conv_layers: int = 19  # the seed's 19 conv layers (fewer only to test quickly)
    num_batches: int = 800  # training steps (the seed's 800 batches)
    batch_size: int = 64  # the seed's batch size
    learning_rate: float = 0.002  # the seed's Adam rate
    bn_decay: float = 0.99  # tf.layers' EMA decay (PyTorch momentum 0.01)
    precise_batches: int = 100  # K: training batches pooled for the precise statistics
    precise_batch_size: int = 64  # examples per precise batch (same as training)
    single_image_count: int = 1000  # first test images fed one at a time per statistics
    validate_every: int = 200  # steps between validation measurements
    # -- engine (speed only; as deep-cnn's) --
    channels_last: bool = True  # NHWC weights and activations
    fused_adam: bool = True  # torch.optim.Adam(fused=True)
    num_threads: int = 1  # intra-op threads, fixed whatever --jobs is

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=(
                "num_conv_layers",
                "num_batches",
                "batch_size",
                "precise_batches",
                "precise_batch_size",
                "single_image_count",
                "validate_every",
                "num_threads",
            ),
            positive=("learning_rate",),
            fraction=("bn_decay",),
        )


def _deep_cnn_config(config: PreciseBNConfig) -> deep_cnn.DeepCNNConfig:
    return deep_cnn.DeepCNNConfig(
        seed=config.seed,
        num_conv_layers=config.num_conv_layers,
        norm="bn",
        bn_decay=config.bn_decay,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        num_batches=config.num_batches,
        channels_last=config.channels_last,
        fused_adam=config.fused_adam,
        num_threads=config.num_threads,
    )


def build_model(config: PreciseBNConfig) -> nn.Module:
    """Seed 000's network with tf.layers-style batch norm (torch's kernel for speed)."""
    model = deep_cnn.build_model(_deep_cnn_config(config))
    for m in model.modules():
        if isinstance(m, BATCH_NORM_TYPES) and hasattr(m, "backend"):
            setattr(m, "backend", BACKEND)  # noqa: B010 (nn.Module's attribute typing)
    return model


def _statistics(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    out = {}
    for name, m in model.named_modules():
        mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if isinstance(m, BATCH_NORM_TYPES) and mean is not None and var is not None:
            out[name] = {"mean": mean.tolist(), "var": var.tolist()}
    return out


def _shift(ema: dict[str, list[float]], precise: dict[str, list[float]], eps: float) -> float:
    """Mean over channels of ``|mu_ema - mu_precise| / sqrt(var_precise + eps)``."""
    mu_e, mu_p = torch.tensor(ema["mean"]), torch.tensor(precise["mean"])
    var_p = torch.tensor(precise["var"])
    return float(((mu_e - mu_p).abs() / (var_p + eps).sqrt()).mean())


def _measure(model: nn.Module, data: Any, count: int, prefix: str) -> dict[str, float]:
    test = data.test
    full = evaluate(model, test.images, test.labels, deep_cnn.sigmoid_cross_entropy)
    images, labels = test.images[:count], test.labels[:count]
    single = predict_one_at_a_time(model, images)
    batched = predict(model, images).argmax(dim=1)
    return {
        f"{prefix}_single_accuracy": (single == labels).double().mean().item(),
        f"{prefix}_agreement": (single == batched).double().mean().item(),
        f"{prefix}_test_accuracy": full["accuracy"],
        f"{prefix}_test_loss": full["loss"],
    }


def run(config: PreciseBNConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train, measure with the EMA, recompute precise statistics, measure again."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = deep_cnn.make_optimizer(model, _deep_cnn_config(config))
    val = data.validation

    def validation() -> dict[str, float]:
        return evaluate(model, val.images, val.labels, deep_cnn.sigmoid_cross_entropy)

    trainer = Trainer(
        model,
        optimizer,
        deep_cnn.sigmoid_cross_entropy,
        TrainBatches(data.train, config.batch_size, seed=config.seed),
        config.num_batches,
        run=ctx.run,
        hooks=(Hook("validation", lambda _: validation(), every(config.validate_every)),),
        checkpoint_every=max(25, config.num_batches // 4),
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()
    count = min(config.single_image_count, len(data.test))
    metrics = _measure(model, data, count, "ema")
    ema = _statistics(model)
    # K fresh batches of training data, in another order than training used.
    batches = TrainBatches(data.train, config.precise_batch_size, seed=config.seed + 10_000)
    precise_bn(model, (batches.next_batch() for _ in range(config.precise_batches)))
    metrics.update(_measure(model, data, count, "precise"))
    precise = _statistics(model)
    eps = _deep_cnn_config(config).bn_eps
    shifts = {name: _shift(ema[name], precise[name], eps) for name in ema}
    if ctx.is_main:
        ctx.run.write_artefact(
            STATS_FILE,
            json.dumps(
                {"bn_eps": eps, "ema": ema, "precise": precise, "shift_sd": shifts}
            ).encode(),
        )
    metrics["max_shift_sd"] = max(shifts.values())
    metrics["precise_gain"] = metrics["precise_single_accuracy"] - metrics["ema_single_accuracy"]
    metrics["train_time_s"] = fit.elapsed_s
    return metrics


def quick(config: PreciseBNConfig) -> PreciseBNConfig:
    """``--quick``: 12 training batches, 4 precise batches, 10 single images."""
    return dataclasses.replace(
        config,
        num_batches=12,
        batch_size=32,
        precise_batches=4,
        precise_batch_size=32,
        single_image_count=10,
        validate_every=6,
    )


_BASE = PreciseBNConfig()
VARIANTS: dict[str, Variant[PreciseBNConfig]] = {
    "bn-800": Variant(_BASE, "the seed's 800 batches, then 100 batches of precise statistics"),
    "bn-200": Variant(
        dataclasses.replace(_BASE, num_batches=200, validate_every=50),
        "stopped after 200 batches (the EMA of decay 0.99 has had 2 time constants)",
    ),
}


def _shift_table(results: ExperimentResults) -> list[Block]:
    rows = []
    for variant in VARIANTS:
        per_layer: dict[str, list[float]] = {}
        for record in results.complete(variant):
            path = record.path / "artefacts" / STATS_FILE
            if not path.is_file():
                continue
            for layer, value in json.loads(path.read_text())["shift_sd"].items():
                per_layer.setdefault(layer, []).append(float(value))
        for layer, values in per_layer.items():
            rows.append((variant, layer, format_summary(summarize(values), "float")))
    if not rows:
        return []
    return [
        Paragraph(
            "How far the EMA running means were from the precise ones, per layer: mean over "
            "channels of |mu_EMA − mu_precise| / sigma_precise (in standard deviations)."
        ),
        Table(("variant", "layer", "EMA shift (sd)"), tuple(rows), caption="mean ± sd over seeds"),
    ]


def _at_least_as_good(variant: str) -> Callable[[ExperimentResults], Verdict]:
    def check(results: ExperimentResults) -> Verdict:
        gains = results.values(variant, "precise_gain")
        if not gains:
            return Verdict(f"{variant}: no finished run", None)
        text = describe(f"{variant}: precise − EMA", gains, "pct", worst="min")
        return Verdict(text, all(g >= 0 for g in gains))

    return check


CLAIMS = tuple(
    Claim(
        f"{label}, single-image test accuracy with precise statistics is at least as good "
        "as with the EMA (seed 001's remark that a true average beats the moving average).",
        _at_least_as_good(variant),
        "every seed: precise − EMA accuracy on the first 1,000 test images, fed one at a "
        "time, is ≥ 0",
    )
    for variant, label in (
        ("bn-800", "After the seed's 800 batches"),
        ("bn-200", "After 200 batches"),
    )
)


def _cost_s(config: PreciseBNConfig) -> float:
    # Only orders the scheduler's work (longest first); one thread:
    # deep-cnn BN steps of 32 ms, validation passes of 0.85 s, 3 ms single images (twice),
    # two test passes.
    return (
        6.0
        + 0.032 * config.num_batches
        + 0.85 * (config.num_batches // config.validate_every)
        + 0.006 * config.single_image_count
    )


SPEC: ExperimentSpec[PreciseBNConfig, Any] = ExperimentSpec(
    name="precise-bn",
    title="precise population statistics vs the EMA on the deep CNN (beyond the seeds)",
    seed_file="000_b963a2cd37855486.txt",
    summary=(
        "Seed 000's 20-layer CNN with tf.layers batch norm (decay 0.99), trained as the seed "
        "does (Adam 0.002, batches of 64) for 800 or 200 batches. Then the first 1,000 test "
        "images are classified one at a time in inference mode with the EMA statistics, the "
        "statistics are recomputed exactly over 100 training batches (bnlab.precise_bn), and "
        "the same images are classified again."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("ema_single_accuracy", "single image, EMA", "pct"),
        Metric("precise_single_accuracy", "single image, precise", "pct"),
        Metric("ema_test_accuracy", "test (10k), EMA", "pct"),
        Metric("precise_test_accuracy", "test (10k), precise", "pct"),
        Metric("precise_agreement", "one-at-a-time = batched", "pct"),
        Metric("max_shift_sd", "largest EMA shift (sd)", "float"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            "validation", "accuracy", "Validation accuracy (EMA statistics)", "accuracy", fmt="pct"
        ),
    ),
    claims=CLAIMS,
    extra_blocks=_shift_table,
    notes=(
        "The precise statistics pool 100 batches of 64 training images drawn in another "
        "order than training used; upstream layers normalize with each batch's own "
        "statistics during the pass, as in training (Ioffe & Szegedy 2015, Alg. 2).",
        "Eval-mode predictions do not depend on the batch, so the 10,000-image test accuracy "
        "is computed batched; the one-at-a-time column checks that on the first 1,000.",
    ),
    cost_s=_cost_s,
)
