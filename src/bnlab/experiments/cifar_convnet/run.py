"""cifar-convnet's training: CIFAR-10 normalized as the seed does, and ``run`` (``model.fit``
with Keras's per-epoch numbers; the model summary and example images as artefacts).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from bnlab.data import TrainBatches, load_cifar10
from bnlab.data.datasets import Datasets, Split
from bnlab.experiments.base import RunContext
from bnlab.experiments.cifar_convnet.config import (
    EPOCH_TAG,
    EXAMPLES_PNG,
    SUMMARY_JSON,
    SUMMARY_TXT,
    CifarConvNetConfig,
)
from bnlab.experiments.cifar_convnet.model import build_model, model_summary, parameter_totals
from bnlab.report.plots import png_bytes
from bnlab.train import Hook, Trainer, evaluate

__all__ = ["CifarData", "load_data", "normalize_global", "run"]


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
    total, trainable, frozen = parameter_totals(rows)
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
