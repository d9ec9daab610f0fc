"""Experiment ``deep-cnn`` (seed 000): batch norm makes a 20-layer CNN trainable in 800 batches.

The seed trains the same 19-conv + 2-dense network on MNIST without batch norm, with
``tf.layers.batch_normalization``, with a ``tf.nn`` low-level batch norm, and with three
alternate placements, and checks the first 100 test images one at a time in inference mode.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import ExperimentSpec, RunContext, Variant, load_mnist_data
from bnlab.models.deep_cnn import DeepCNN
from bnlab.report.claims import (
    Threshold,
    against_reference,
    at_step,
    describe,
    every_run,
    final,
)
from bnlab.report.reference import REFERENCE_FILES, Reference, SeriesReference
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Metric, Verdict
from bnlab.report.tables import band_table, steps_table
from bnlab.train import Hook, HookContext, Trainer, evaluate, every
from bnlab.train import distributed as data_parallel
from bnlab.train.evaluate import predict, predict_one_at_a_time

__all__ = ["SPEC", "DeepCNNConfig", "build_model", "make_optimizer", "run"]


@dataclass(frozen=True)
class DeepCNNConfig:
    """One run of seed 000. Defaults are the seed's sizes with no batch norm."""

    seed: int = 0  # fixes the initial weights and the batch order (the CLI sets 0..K-1)
    # -- network (the seed's conv_layer / fully_connected) --
    num_conv_layers: int = 19  # layer_i in range(1, 20)
    filters_per_depth: int = 4  # conv layer i has 4*i filters
    dense_units: int = 100  # the one hidden dense layer
    norm: str = "none"  # bnlab.norm registry name: "none", "bn" (bnlab), "torch-bn", ...
    placement: str = "bn-relu"  # BN position in conv layers (bnlab.models.PLACEMENTS)
    lowlevel: bool = False  # the tf.nn version: explicit gamma/beta/population tensors
    conv_init: str = "glorot-uniform"  # tf.layers default; "truncated-normal" for tf.nn
    conv_init_std: float = 0.05  # the tf.nn version's tf.truncated_normal stddev
    bn_eps: float = 1e-3  # TF's batch-norm epsilon (PyTorch's default is 1e-5)
    bn_decay: float = 0.99  # TF decay = weight of the old value; PyTorch momentum 0.01
    # -- training (the seed's train()) --
    learning_rate: float = 0.002  # tf.train.AdamOptimizer(0.002)
    adam_eps: float = 1e-8  # TF1 AdamOptimizer default epsilon
    batch_size: int = 64  # images per training batch
    num_batches: int = 800  # optimizer steps
    # -- evaluation (the seed's schedule, in batch indices batch_i = 0..799) --
    validate_every: int = 100  # full validation set when batch_i % 100 == 0
    train_acc_every: int = 25  # the training batch, inference mode, elif batch_i % 25 == 0
    single_image_count: int = 100  # first N test images fed one at a time at the end
    eval_batch_size: int = 1000  # chunk size for evaluation (memory only; same result)
    # -- engine (speed only: the same model and update rule; docs/performance.md) --
    channels_last: bool = True  # NHWC weights and activations: oneDNN's faster conv layout
    fused_adam: bool = True  # torch.optim.Adam(fused=True): one kernel for all parameters
    num_threads: int = 1  # intra-op threads, fixed so that a run's numbers never depend on
    # how many runs share the machine (bnlab reproduce --jobs)
    checkpoint_every: int = 100  # steps between checkpoints (resume point)
    log_every: int = 25  # steps between metric writes (one host sync per chunk)

    def __post_init__(self) -> None:
        for name in (
            "num_conv_layers",
            "batch_size",
            "num_batches",
            "validate_every",
            "train_acc_every",
            "single_image_count",
            "eval_batch_size",
            "num_threads",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DeepCNNConfig.{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 < self.bn_decay < 1.0:
            raise ValueError(f"DeepCNNConfig.bn_decay must lie in (0, 1); got {self.bn_decay}")


def build_model(config: DeepCNNConfig, image_size: int = 28) -> torch.nn.Module:
    """The network of ``config`` (initialized from the current torch RNG state), in the
    channels-last memory format when ``config.channels_last`` (its inputs need no change:
    a one-channel NCHW image batch is already channels-last)."""
    model = DeepCNN(
        num_conv_layers=config.num_conv_layers,
        filters_per_depth=config.filters_per_depth,
        dense_units=config.dense_units,
        image_size=image_size,
        norm=config.norm,
        placement=config.placement,
        lowlevel=config.lowlevel,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
        conv_init=config.conv_init,
        conv_init_std=config.conv_init_std,
    )
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def make_optimizer(model: torch.nn.Module, config: DeepCNNConfig) -> torch.optim.Adam:
    """The seed's ``tf.train.AdamOptimizer(learning_rate)`` (TF1's epsilon) over ``model``."""
    return torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.999),
        eps=config.adam_eps,
        fused=config.fused_adam,
    )


def sigmoid_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """The seed's loss: ``reduce_mean(sigmoid_cross_entropy_with_logits(logits, one_hot))``.

    A mean over the batch and the 10 classes, each class an independent sigmoid.
    """
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def run(config: DeepCNNConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train one seed of one variant as the seed does; return the final metrics.

    Logs ``validation`` (full validation set, every ``validate_every`` batches and at the
    end) and ``train_batch`` (the batch just trained, in inference mode) records; the
    per-step training loss is logged by the trainer. Final metrics: validation and test
    loss and accuracy, accuracy of the first ``single_image_count`` test images fed one at
    a time and batched, and their prediction agreement.
    """
    torch.manual_seed(config.seed)
    model = build_model(config, image_size=data.train.images.shape[-1])
    # Under torchrun: DDP (+ SyncBatchNorm with --sync-bn) around `model`, which stays the
    # network to evaluate; one process: `model` itself. Before the optimizer (new BN params).
    dp = data_parallel.current()
    train_model = dp.wrap(model)
    optimizer = make_optimizer(model, config)
    batches = dp.shard(TrainBatches(data.train, config.batch_size, seed=config.seed))
    val, test = data.validation, data.test

    def validation() -> dict[str, float]:
        return evaluate(
            model, val.images, val.labels, sigmoid_cross_entropy, batch_size=config.eval_batch_size
        )

    def train_batch(h: HookContext) -> dict[str, float]:
        return evaluate(
            model, h.inputs, h.targets, sigmoid_cross_entropy, batch_size=config.eval_batch_size
        )

    trainer = Trainer(
        train_model,
        optimizer,
        sigmoid_cross_entropy,
        batches,
        config.num_batches,
        run=ctx.run,
        hooks=(
            Hook("validation", lambda _: validation(), every(config.validate_every)),
            Hook(
                "train_batch",
                train_batch,
                every(config.train_acc_every, unless_every=config.validate_every),
            ),
        ),
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()

    final_val = validation()
    final_test = evaluate(
        model, test.images, test.labels, sigmoid_cross_entropy, batch_size=config.eval_batch_size
    )
    trainer.metrics.append(
        {"phase": "train", "tag": "validation", "step": config.num_batches, **final_val}
    )
    trainer.metrics.append(
        {"phase": "train", "tag": "test", "step": config.num_batches, **final_test}
    )
    trainer.metrics.flush()

    n = min(config.single_image_count, len(test))
    images, labels = test.images[:n], test.labels[:n]
    one_at_a_time = predict_one_at_a_time(model, images)
    batched = predict(model, images, batch_size=config.eval_batch_size).argmax(dim=1)
    if ctx.is_main:
        ctx.run.write_artefact(
            "first_test_predictions.json",
            json.dumps(
                {
                    "labels": labels.tolist(),
                    "one_at_a_time": one_at_a_time.tolist(),
                    "batched": batched.tolist(),
                }
            ).encode(),
        )
    return {
        "validation_accuracy": final_val["accuracy"],
        "validation_loss": final_val["loss"],
        "test_accuracy": final_test["accuracy"],
        "test_loss": final_test["loss"],
        "single_image_accuracy": (one_at_a_time == labels).double().mean().item(),
        "batched_first_n_accuracy": (batched == labels).double().mean().item(),
        "single_batched_agreement": (one_at_a_time == batched).double().mean().item(),
        "train_time_s": fit.elapsed_s,
    }


def quick(config: DeepCNNConfig) -> DeepCNNConfig:
    """Tiny step counts for ``--quick``: the full network, 12 batches of 32, 10 single images."""
    return dataclasses.replace(
        config,
        batch_size=32,
        num_batches=12,
        validate_every=5,
        train_acc_every=2,
        single_image_count=10,
        checkpoint_every=5,
        log_every=5,
    )


# -- variants ---------------------------------------------------------------------------
_BASE = DeepCNNConfig()
_BN = dataclasses.replace(_BASE, norm="bn", placement="bn-relu")
VARIANTS: dict[str, Variant[DeepCNNConfig]] = {
    "no-bn": Variant(_BASE, "no batch norm: conv (bias) + ReLU, dense (bias) + ReLU"),
    "bn": Variant(_BN, "tf.layers batch norm: conv (no bias), BN, ReLU; dense (no bias), BN, ReLU"),
    "bn-lowlevel": Variant(
        dataclasses.replace(_BN, lowlevel=True, conv_init="truncated-normal"),
        "tf.nn batch norm: explicit gamma, beta, population mean/variance; "
        "truncated-normal(0.05) conv weights",
    ),
    "bias-bn-relu": Variant(
        dataclasses.replace(_BN, placement="bias-bn-relu"), "alternate: conv with bias, BN, ReLU"
    ),
    "bias-relu-bn": Variant(
        dataclasses.replace(_BN, placement="bias-relu-bn"),
        "alternate: conv with bias, ReLU, then BN",
    ),
    "relu-bn": Variant(
        dataclasses.replace(_BN, placement="relu-bn"), "alternate: conv without bias, ReLU, then BN"
    ),
}
BN_VARIANTS = ("bn", "bn-lowlevel", "bias-bn-relu", "bias-relu-bn", "relu-bn")
PLACEMENT_VARIANTS = ("bias-bn-relu", "bias-relu-bn", "relu-bn")


# -- claims -----------------------------------------------------------------------------
def _single_image_check(results: ExperimentResults) -> Verdict:
    """Every BN run: one-at-a-time accuracy on the first test images equals batched accuracy."""
    gaps: list[float] = []
    singles: list[float] = []
    for variant in BN_VARIANTS:
        for run_ in results.complete(variant):
            single = run_.metric("single_image_accuracy")
            batched = run_.metric("batched_first_n_accuracy")
            if single is not None and batched is not None:
                gaps.append(abs(single - batched))
                singles.append(single)
    if not gaps:
        return Verdict("no finished batch-norm run", None)
    measured = (
        f"max |one-at-a-time − batched| = {100 * max(gaps):.0f} points over {len(gaps)} BN runs; "
        + describe("one-at-a-time accuracy", singles, "pct", worst="min")
    )
    return Verdict(measured, max(gaps) <= 0.01)


#: The seed's own TF1 code over several random seeds (``../shared/reference``, shipped in
#: ``bnlab/report/reference_runs``): the tf.layers version and the low-level tf.nn version.
REFERENCE_FILE = REFERENCE_FILES["000"]
_TF_LAYERS = {"version": "layers"}
_TF_NN = {"version": "nn"}


def _reference_validation(record: dict[str, Any]) -> dict[int, float]:
    """A reference run's validation accuracy by bnlab step: after batch i is step i + 1."""
    series = {int(b) + 1: float(v) for b, v in record.get("val", {}).items()}
    if isinstance(record.get("final_val"), int | float):
        series[int(record.get("num_batches", 800))] = float(record["final_val"])
    return series


CLAIMS = (
    Claim(
        "Without batch normalization the 20-layer network does not learn in 800 batches: "
        "test accuracy about 10%, most likely below 15%.",
        every_run(["no-bn"], "test_accuracy", below=0.15),
        "every no-bn seed: test accuracy < 15% (the no-BN network was not run as a reference)",
        short="no BN: about 10% test accuracy (< 15%)",
    ),
    Claim(
        "With batch normalization (tf.layers) the same network trains to over 90% in the "
        "same 800 batches.",
        against_reference(
            final("bn", "test_accuracy", "bn: test accuracy after 800 batches"),
            Reference(REFERENCE_FILE, ("final_test",), _TF_LAYERS, "tf.layers version"),
            literal=Threshold(above=0.90),
        ),
        "bn's test accuracy vs the tf.layers original's (permutation test, level 0.05); "
        "literal: > 90%",
        short="BN (tf.layers): > 90% test accuracy after 800 batches",
    ),
    Claim(
        "With batch normalization, validation accuracy is almost 94% after only 500 batches.",
        against_reference(
            at_step("bn", "validation", "accuracy", 501, "bn: validation accuracy after batch 500"),
            Reference(REFERENCE_FILE, ("val", "500"), _TF_LAYERS, "tf.layers version"),
            literal=Threshold(above=0.91),
        ),
        "bn's validation accuracy after batch 500 vs the tf.layers original's (permutation "
        "test, level 0.05); literal: > 91% ('almost 94%', 3 points slack)",
        short="BN: almost 94% validation accuracy after 500 batches",
    ),
    Claim(
        "Accuracy on the first 100 test images fed one at a time in inference mode matches "
        "batched inference (population statistics are learned and used).",
        against_reference(
            final("bn", "single_image_accuracy", "bn: first 100 test images, one at a time"),
            Reference(REFERENCE_FILE, ("single100",), _TF_LAYERS, "tf.layers version"),
            literal=_single_image_check,
        ),
        "bn's one-at-a-time accuracy on the first 100 vs the tf.layers original's "
        "(permutation test, level 0.05); literal: every BN run (5 variants) "
        "|one-at-a-time − batched| ≤ 1 point on the same images",
        short="one at a time in inference mode = batched",
    ),
    Claim(
        "The low-level tf.nn version (explicit gamma, beta, population mean and variance) "
        "also works.",
        against_reference(
            final("bn-lowlevel", "test_accuracy", "bn-lowlevel: test accuracy after 800 batches"),
            Reference(REFERENCE_FILE, ("final_test",), _TF_NN, "tf.nn version"),
            literal=Threshold(above=0.90),
        ),
        "bn-lowlevel's test accuracy vs the tf.nn original's (permutation test, level 0.05); "
        "literal: > 90%",
        short="the low-level tf.nn version also works (> 90%)",
    ),
    Claim(
        "The alternate placements (bias + BN before ReLU; bias, ReLU, then BN; no bias, ReLU, "
        "then BN) all still train.",
        every_run(list(PLACEMENT_VARIANTS), "test_accuracy", above=0.90),
        "every seed of the three placements: test accuracy > 90% (the placements were not "
        "run as a reference)",
        short="the alternate placements all train (> 90%)",
    ),
)


def seed_log(results: ExperimentResults) -> list[Block]:
    """The seed's printed log as a table: validation accuracy after batch 0, 100, ..., end."""
    runs = [r for v in results.variants for r in results.complete(v)]
    if not runs:
        return []
    config = runs[0].config
    num_batches = int(config.get("num_batches", 800))
    every_ = int(config.get("validate_every", 100))
    batches = list(range(0, num_batches, every_))
    steps = [b + 1 for b in batches] + [num_batches]
    headers = [f"batch {b}" for b in batches] + ["final"]
    table = steps_table(
        results,
        list(VARIANTS),
        "validation",
        "accuracy",
        steps,
        headers,
        caption=f"Validation accuracy after every {every_}th batch and at the end (the seed's "
        "printed log), mean ± sd over seeds",
    )
    return [table] if table.rows else []


#: Run directories of ``bn`` trained by two processes (``torchrun``, docs/distributed.md).
DATA_PARALLEL_VARIANTS = ("bn@2proc-syncbn", "bn@2proc-localbn")


def data_parallel_blocks(results: ExperimentResults) -> list[Block]:
    """Data-parallel ``bn`` runs against the single-process band, when there are any.

    Global batch 64 either way; ``syncbn`` normalizes by the statistics of all 64 images,
    ``localbn`` each process by its own 32.
    """
    present = [v for v in DATA_PARALLEL_VARIANTS if results.complete(v)]
    if not present:
        return []
    table = band_table(
        results,
        "bn",
        present,
        "test_accuracy",
        slack=0.01,
        caption="Test accuracy of bn trained by 2 processes (global batch 64; syncbn: "
        "statistics over all 64 images, localbn: each process over its 32) against the "
        "single-process seeds; the band is their range widened by 1 point",
    )
    return [table] if table.rows else []


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """The seed's printed log, then the data-parallel comparison (if those runs exist)."""
    return seed_log(results) + data_parallel_blocks(results)


SPEC: ExperimentSpec[DeepCNNConfig, Any] = ExperimentSpec(
    name="deep-cnn",
    title="batch norm makes a 20-layer CNN trainable (seed 000)",
    seed_file="000_b963a2cd37855486.txt",
    summary=(
        "MNIST 28x28x1 through 19 conv layers (3x3, TF 'same', 4·i filters, stride 2 when "
        "i % 3 == 0), dense 100, dense 10; mean sigmoid cross-entropy on one-hot labels; Adam "
        "0.002; 800 batches of 64. Validation every 100 batches, the training batch every 25, "
        "final validation and test accuracy, and the first 100 test images one at a time."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("validation_accuracy", "validation acc.", "pct"),
        Metric("test_accuracy", "test acc.", "pct"),
        Metric("test_loss", "test loss", "float"),
        Metric("single_image_accuracy", "first 100, one at a time", "pct"),
        Metric("batched_first_n_accuracy", "first 100, batched", "pct"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            "validation",
            "accuracy",
            "Validation accuracy (every 100 batches)",
            "accuracy",
            fmt="pct",
            references=(
                SeriesReference(
                    REFERENCE_FILE,
                    _reference_validation,
                    _TF_LAYERS,
                    "seed's own TF1 code, tf.layers",
                    variant="bn",
                ),
                SeriesReference(
                    REFERENCE_FILE,
                    _reference_validation,
                    _TF_NN,
                    "seed's own TF1 code, tf.nn",
                    variant="bn-lowlevel",
                ),
            ),
        ),
        Curve(
            "train_batch",
            "accuracy",
            "Training-batch accuracy, inference mode (every 25 batches)",
            "accuracy",
            fmt="pct",
        ),
        Curve(
            "train",
            "loss",
            "Training loss (moving average over 25 steps)",
            "loss",
            smooth=25,
            logy=True,
        ),
        Curve("validation", "loss", "Validation loss", "loss", logy=True),
    ),
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=(
        "TF-faithful presets: glorot-uniform kernels and zero biases (tf.layers defaults), "
        "BN epsilon 1e-3 and decay 0.99 (PyTorch momentum 0.01), Adam epsilon 1e-8, TF's "
        "'same' padding (the extra pixel after), NHWC flatten order, denormals flushed to zero.",
        "PyTorch's Adam applies epsilon to the bias-corrected second moment, TF1's to the "
        "uncorrected one; with epsilon 1e-8 the difference is below float32 resolution "
        "after the first steps.",
        "The module-API variants track the unbiased batch variance in the running variance "
        "(as PyTorch and TF's fused kernel do); the low-level variant tracks the biased one, "
        "as the seed's tf.nn.moments code does.",
        "Claims with a reference are judged against the seed's own TF1 code run over "
        "several random seeds (the tf.layers version 10 times, the tf.nn version 5 times), "
        "not against the one run the seed printed; the others on every seed.",
    ),
)
