"""Experiment ``cifar-convnet`` (seed 004): the Keras ConvNet on CIFAR-10 with batch norm
before the activation and the variant with batch norm after it; Keras-style model summary
(553,850 parameters: 553,626 trainable, 224 not), example images, per-epoch curves.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from bnlab.data import TrainBatches, load_cifar10
from bnlab.data.datasets import Datasets, Split
from bnlab.experiments.base import ExperimentSpec, RunContext, Variant
from bnlab.models.cifar import LayerSummary, cifar_convnet, format_summary, summarize_model
from bnlab.report.claims import every_run
from bnlab.report.plots import png_bytes
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Figure, Metric, Paragraph, Table, Verdict
from bnlab.train import Hook, Trainer, evaluate

__all__ = [
    "SPEC",
    "CifarConvNetConfig",
    "CifarData",
    "build_model",
    "load_data",
    "model_summary",
    "normalize_global",
    "run",
]

EPOCH_TAG = "epoch"
SUMMARY_TXT, SUMMARY_JSON, EXAMPLES_PNG = "model_summary.txt", "model_summary.json", "examples.png"
#: The seed's summary (both models): total, trainable, non-trainable parameters.
SEED_PARAMS = (553_850, 553_626, 224)


@dataclass(frozen=True)
class CifarConvNetConfig:
    """One run of seed 004. Defaults: the seed's first model (BN before the activation)."""

    seed: int = 0  # fixes the initial weights, the shuffling and the dropout masks
    # -- network (the seed's tf.keras.Sequential) --
    placement: str = "before"  # "before": conv, BN, ELU; "after": conv with ELU, then BN
    filters: tuple[int, ...] = (16, 32, 64)  # Conv2D filters of the three blocks
    dense_units: int = 512  # Dense(512, activation='elu')
    dropout: float = 0.3  # both Dropout(0.3) layers
    norm: str = "bn"  # bnlab.norm registry name for BatchNormalization()
    bn_eps: float = 1e-3  # Keras BatchNormalization epsilon
    bn_decay: float = 0.99  # Keras BatchNormalization momentum (TF decay)
    # -- training: model.compile(optimizer='adam'), model.fit(batch_size=250, epochs=10) --
    learning_rate: float = 0.001  # Keras Adam default
    adam_eps: float = 1e-7  # Keras Adam default epsilon
    batch_size: int = 250
    epochs: int = 10
    eval_batch_size: int = 250  # model.evaluate(..., batch_size=250)
    example_images: int = 6  # the seed shows the first 6 training images
    # -- engine --
    num_threads: int = 2  # intra-op threads

    def __post_init__(self) -> None:
        for name in ("dense_units", "batch_size", "epochs", "eval_batch_size", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"CifarConvNetConfig.{name} must be >= 1; got {getattr(self, name)}"
                )
        if self.placement not in ("before", "after"):
            raise ValueError(
                f"CifarConvNetConfig.placement must be 'before' or 'after'; got {self.placement!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CifarConvNetConfig.dropout must lie in [0, 1); got {self.dropout}")


@dataclass(frozen=True)
class CifarData:
    """CIFAR-10 normalized by the global training mean and std, plus raw example images.

    Attributes:
        data: the splits, images ``(x - mean) / std`` (one scalar mean and std over every
            training pixel, as the seed's ``x_train_raw.mean()``/``.std()``).
        mean, std: those scalars (on the [0, 1] scale; the normalized values are the same
            as on the seed's 0..255 scale).
        examples: the first training images before normalization, ``(K, 3, 32, 32)``.
        example_labels: their labels.
    """

    data: Datasets
    mean: float
    std: float
    examples: Tensor
    example_labels: Tensor


def normalize_global(train: Tensor, *others: Tensor) -> tuple[float, float]:
    """Normalize ``train`` and ``others`` in place by ``train``'s global mean and std.

    ``x <- (x - mean) / std`` with ``mean``/``std`` over every value of ``train`` (the
    population std, numpy's default ``ddof=0``), accumulated in float64.

    Returns:
        ``(mean, std)``.

    Raises:
        ValueError: ``train`` is empty or constant.

    >>> a, b = torch.tensor([0.0, 2.0]), torch.tensor([1.0])
    >>> normalize_global(a, b), a.tolist(), b.tolist()
    ((1.0, 1.0), [-1.0, 1.0], [0.0])
    """
    if train.numel() == 0:
        raise ValueError("cannot normalize by the statistics of an empty training set")
    std_, mean_ = torch.std_mean(train.double(), correction=0)
    mean, std = float(mean_), float(std_)
    if not std > 0:
        raise ValueError(f"the training images are constant (std {std}); cannot normalize")
    for x in (train, *others):
        x.sub_(mean).div_(std)
    return mean, std


def load_data(data_dir: Path | None, progress: bool) -> CifarData:
    """CIFAR-10 (either format, from ``data_dir``, ``$BNLAB_DATA_DIR`` or the cache).

    Raises:
        bnlab.data.DatasetNotFoundError: CIFAR-10 is not on this machine and cannot be
            downloaded (the message says where bnlab looked and what to do); the engine then
            records the experiment as not run, before anything is trained.
    """
    ds = load_cifar10(data_dir, progress=progress)
    examples = ds.train.images[:6].clone()
    labels = ds.train.labels[:6].clone()
    mean, std = normalize_global(ds.train.images, ds.test.images, ds.validation.images)
    return CifarData(ds, mean, std, examples, labels)


def build_model(config: CifarConvNetConfig, num_classes: int = 10) -> torch.nn.Sequential:
    """The network of ``config`` (initialized from the current torch RNG)."""
    return cifar_convnet(
        config.placement,
        filters=config.filters,
        dense_units=config.dense_units,
        num_classes=num_classes,
        dropout=config.dropout,
        norm=config.norm,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
    )


def model_summary(config: CifarConvNetConfig) -> tuple[list[LayerSummary], str]:
    """The Keras-style summary of ``config``'s network: rows and text."""
    rows = summarize_model(build_model(config), (3, 32, 32))
    title = f'Model: "cifar-convnet, BN {config.placement} the activation"'
    return rows, format_summary(rows, title=title)


def _totals(rows: list[LayerSummary]) -> tuple[int, int, int]:
    trainable = sum(r.trainable for r in rows)
    frozen = sum(r.non_trainable for r in rows)
    return trainable + frozen, trainable, frozen


def _examples_png(images: Tensor, labels: Tensor, classes: tuple[str, ...]) -> bytes:
    n = images.shape[0]
    fig = MplFigure(figsize=(2.2 * max(n, 1), 2.6))
    axes = fig.subplots(1, max(n, 1), squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_title(classes[int(labels[i])], fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def run(config: CifarConvNetConfig, data: CifarData, ctx: RunContext) -> dict[str, float]:
    """Train as ``model.fit`` does; return final train/test loss and accuracy and the counts.

    Each epoch logs an ``epoch`` record like Keras's ``verbose=2`` line: ``loss`` and
    ``accuracy`` averaged over the epoch's training batches (training mode, dropout on),
    ``val_loss`` and ``val_accuracy`` on the test set (the seed's ``validation_data``) in
    inference mode. Writes ``artefacts/model_summary.txt``/``.json`` and ``examples.png``.
    """
    return _run(config, data, ctx)


def _run(config: CifarConvNetConfig, data: CifarData, ctx: RunContext) -> dict[str, float]:
    ds = data.data
    train, test = ds.train, ds.test
    rows, text = model_summary(config)
    total, trainable, frozen = _totals(rows)
    if ctx.is_main:
        ctx.run.write_artefact(SUMMARY_TXT, (text + "\n").encode())
        ctx.run.write_artefact(
            SUMMARY_JSON,
            json.dumps(
                {
                    "layers": [dataclasses.asdict(r) for r in rows],
                    "total": total,
                    "trainable": trainable,
                    "non_trainable": frozen,
                },
                indent=2,
            ).encode(),
        )
        n = min(config.example_images, data.examples.shape[0])
        ctx.run.write_artefact(
            EXAMPLES_PNG, _examples_png(data.examples[:n], data.example_labels[:n], ds.classes)
        )

    torch.manual_seed(config.seed)
    model = build_model(config, ds.num_classes)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=config.adam_eps
    )
    batches = TrainBatches(train, config.batch_size, seed=config.seed)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    sums: list[Tensor] = []  # per batch: (loss * n, correct, n), read once per epoch

    def loss_fn(logits: Tensor, labels: Tensor) -> Tensor:
        loss = F.cross_entropy(logits, labels)  # categorical_crossentropy on softmax outputs
        with torch.no_grad():
            n = torch.tensor(float(labels.shape[0]))
            correct = (logits.argmax(dim=1) == labels).sum().to(n.dtype)
            sums.append(torch.stack([loss.detach() * n, correct, n]))
        return loss

    def end_of_epoch() -> dict[str, float]:
        loss_sum, correct, n = torch.stack(sums).sum(dim=0).tolist()
        sums.clear()
        val = _evaluate(model, test, config.eval_batch_size)
        return {
            "loss": loss_sum / n,
            "accuracy": correct / n,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
        }

    trainer = Trainer(
        model,
        optimizer,
        loss_fn,
        batches,
        config.epochs * steps_per_epoch,
        run=ctx.run,
        hooks=(
            Hook(EPOCH_TAG, lambda _h: end_of_epoch(), lambda b: (b + 1) % steps_per_epoch == 0),
        ),
        # Checkpoints at epoch ends only, where the epoch's running sums are empty.
        checkpoint_every=steps_per_epoch,
        log_every=steps_per_epoch,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()
    final_train = _evaluate(model, train, config.eval_batch_size)
    final_test = _evaluate(model, test, config.eval_batch_size)
    return {
        "train_accuracy": final_train["accuracy"],
        "train_loss": final_train["loss"],
        "test_accuracy": final_test["accuracy"],
        "test_loss": final_test["loss"],
        "total_params": float(total),
        "trainable_params": float(trainable),
        "non_trainable_params": float(frozen),
        "train_time_s": fit.elapsed_s,
    }


def _evaluate(model: torch.nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    return evaluate(model, split.images, split.labels, F.cross_entropy, batch_size=batch_size)


def quick(config: CifarConvNetConfig) -> CifarConvNetConfig:
    """Tiny sizes for ``--quick``: 2 epochs of batches of 50 (use small CIFAR-format data)."""
    return dataclasses.replace(config, batch_size=50, epochs=2, eval_batch_size=100)


# -- variants ---------------------------------------------------------------------------
_BASE = CifarConvNetConfig()
VARIANTS: dict[str, Variant[CifarConvNetConfig]] = {
    "bn-before": Variant(
        _BASE, "BN before the activation: conv (no bias), BN, ELU, max-pool (x3); dense 512"
    ),
    "bn-after": Variant(
        dataclasses.replace(_BASE, placement="after"),
        "BN after the activation: conv (no bias) with ELU, BN, max-pool (x3); dense 512",
    ),
}


# -- report -----------------------------------------------------------------------------
def _summary_check(results: ExperimentResults) -> Verdict:
    """Counts from the runs' summaries; without runs, from the model builder (no training)."""
    measured: list[str] = []
    ok = True
    for variant, v in VARIANTS.items():
        runs = results.complete(variant)
        if runs:
            counts = {
                (
                    int(r.metric("total_params") or -1),
                    int(r.metric("trainable_params") or -1),
                    int(r.metric("non_trainable_params") or -1),
                )
                for r in runs
            }
            source = f"{len(runs)} run(s)"
        else:
            counts = {_totals(model_summary(v.config)[0])}
            source = "model builder, no run"
        for total, trainable, frozen in sorted(counts):
            measured.append(
                f"{variant}: {total:,} total, {trainable:,} trainable, {frozen:,} not ({source})"
            )
        ok = ok and counts == {SEED_PARAMS}
    return Verdict("; ".join(measured), ok)


def _accuracy_claim(variant: str, seed_value: float) -> Callable[[ExperimentResults], Verdict]:
    check = every_run([variant], "test_accuracy", above=seed_value - 0.03)

    def run_check(results: ExperimentResults) -> Verdict:
        if not results.complete(variant) and results.not_run is not None:
            return Verdict("not run: CIFAR-10 is not on this machine", None)
        return check(results)

    return run_check


CLAIMS = (
    Claim(
        "Both models have 553,850 parameters, 553,626 trainable and 224 not (BN has 4 per "
        "channel, 2 of them trainable).",
        _summary_check,
        "exactly (553,850, 553,626, 224) for both variants",
        short="553,850 parameters, 553,626 trainable, 224 not",
    ),
    Claim(
        "BN before the activation: test accuracy 0.759 after 10 epochs (train 0.836).",
        _accuracy_claim("bn-before", 0.759),
        "every bn-before seed: test accuracy > 72.9% (seed value - 3 points)",
        short="BN before the activation: 0.759 test accuracy",
    ),
    Claim(
        "BN after the activation: test accuracy 0.758 after 10 epochs (train 0.869).",
        _accuracy_claim("bn-after", 0.758),
        "every bn-after seed: test accuracy > 72.8% (seed value - 3 points)",
        short="BN after the activation: 0.758 test accuracy",
    ),
)


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """The model summaries and the example images of the first finished run of each variant."""
    blocks: list[Block] = []
    for variant in VARIANTS:
        runs = results.complete(variant)
        if not runs:
            continue
        run = runs[0]
        summary = run.path / "artefacts" / SUMMARY_TXT
        if summary.is_file():
            lines = summary.read_text(encoding="utf-8").splitlines()
            blocks.append(
                Table(("model.summary()",), tuple((line,) for line in lines), f"{variant}")
            )
        examples = run.path / "artefacts" / EXAMPLES_PNG
        if examples.is_file() and not any(isinstance(b, Figure) for b in blocks):
            blocks.append(
                Figure(
                    examples.read_bytes(),
                    "The first training images and their classes.",
                    "examples",
                )
            )
    if not blocks:
        blocks.append(Paragraph("No finished run: no summary or example images."))
    return blocks


SPEC: ExperimentSpec[CifarConvNetConfig, CifarData] = ExperimentSpec(
    name="cifar-convnet",
    title="a Keras ConvNet on CIFAR-10, BN before or after the activation (seed 004)",
    seed_file="004_62ac979095509d64.txt",
    summary=(
        "CIFAR-10 normalized by the global training mean and std; [conv 3x3 same, no bias "
        "(16, 32, 64) -> BN -> ELU -> max-pool 2] x3, dropout 0.3, dense 512 ELU, dropout "
        "0.3, dense 10 softmax; Adam (Keras defaults); batch 250; 10 epochs, validated on "
        "the test set. Variant: BN after the activation."
    ),
    variants=VARIANTS,
    load_data=load_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("test_accuracy", "test acc.", "pct"),
        Metric("train_accuracy", "train acc. (inference)", "pct"),
        Metric("test_loss", "test loss", "float"),
        Metric("total_params", "parameters", "int"),
        Metric("non_trainable_params", "non-trainable", "int"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            EPOCH_TAG,
            "accuracy",
            "Training accuracy per epoch (Keras 'acc')",
            "accuracy",
            fmt="pct",
        ),
        Curve(
            EPOCH_TAG,
            "val_accuracy",
            "Test accuracy per epoch (Keras 'val_acc')",
            "accuracy",
            fmt="pct",
        ),
        Curve(EPOCH_TAG, "loss", "Training loss per epoch (Keras 'loss')", "loss"),
        Curve(EPOCH_TAG, "val_loss", "Test loss per epoch (Keras 'val_loss')", "loss"),
    ),
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=(
        "Keras presets: glorot-uniform kernels, zero biases, BN epsilon 1e-3 and momentum "
        "0.99 (PyTorch momentum 0.01), Adam learning rate 1e-3 and epsilon 1e-7; the dense "
        "layer reads the features in Keras's channels-last order.",
        "Per-epoch training loss and accuracy are averages over the epoch's batches in "
        "training mode (dropout on), as Keras prints them; the final train and test "
        "accuracy are model.evaluate-style, in inference mode, in batches of 250.",
        "Batches follow TF's next_batch order (a fresh shuffle each epoch; 50,000 / 250 = "
        "200 full batches per epoch, so epochs line up with Keras's).",
        "The summary counts BN's moving mean and variance as non-trainable parameters, as "
        "Keras does; bnlab's integer num_batches_tracked counter is not a weight and is not "
        "counted. Output shapes are PyTorch's (N, C, H, W).",
        "CIFAR-10 cannot be downloaded on machines without internet: the experiment then "
        "stops before training with the data layer's message, and the parameter-count claim "
        "is checked on the model builder alone.",
    ),
)
