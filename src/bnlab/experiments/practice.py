"""Shared pieces of the batch-norm-in-practice experiments (batch size, learning rate, batch
renorm, precise statistics): small MNIST networks whose norm layer is a registry name, a
non-i.i.d. batch sampler, one training run that survives divergence, and the sweep figure.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.data import TrainBatches
from bnlab.data.datasets import Split
from bnlab.experiments.base import RunContext
from bnlab.norm.layers.registry import get_norm
from bnlab.norm.layers.safe import NonFiniteBatchWarning, refusals
from bnlab.report.claims import describe, paired_runs
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Figure, Table, Verdict
from bnlab.report.stats import format_summary, summarize
from bnlab.train import Hook, Trainer, evaluate, every
from bnlab.train.errors import NonFiniteLossError

__all__ = [
    "NonIIDBatches",
    "TrainOutcome",
    "mnist_batches",
    "mnist_mlp",
    "paired_check",
    "paired_differences",
    "small_cnn",
    "sweep_blocks",
    "train_classifier",
]

# torch's kernel for the experiments' norm layers: on an idle 2-core machine the fused
# numba kernel and torch's take the same time per deep-cnn step (0.07 s), but while other
# jobs loaded the machine (load ~8) the fused one took 1.27 s against 0.22 s (its thread
# pool suffers from oversubscription). The results are the same either way (parity tests).
BACKEND = "native"


def _norm(name: str, channels: int, spatial_dims: int, options: Mapping[str, Any]) -> nn.Module:
    kwargs = dict(options)
    if name in ("bn", "renorm", "ghost"):
        kwargs.setdefault("backend", BACKEND)
    return get_norm(name, channels, spatial_dims=spatial_dims, **kwargs)


def small_cnn(
    norm: str, norm_options: Mapping[str, Any] | None = None, widths: Sequence[int] = (16, 32, 32)
) -> nn.Sequential:
    """A small MNIST CNN: ``[conv 3x3 (no bias) -> norm -> ReLU -> max-pool 2] x 2``,
    ``conv 3x3 -> norm -> ReLU``, global average pool, dense 10.

    Args:
        norm: a :func:`bnlab.norm.get_norm` name (``"bn"``, ``"gn"``, ``"renorm"``, ...).
        norm_options: keyword arguments for every norm layer (e.g. ``num_groups=4``).
        widths: channels of the three conv layers.

    Shape:
        ``(N, 1, 28, 28)`` -> ``(N, 10)`` logits.

    >>> small_cnn("gn", {"num_groups": 4})(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    options = dict(norm_options or {})
    layers: list[tuple[str, nn.Module]] = []
    c_in = 1
    for i, c in enumerate(widths):
        parts = [
            ("conv", nn.Conv2d(c_in, c, 3, padding=1, bias=norm == "none")),
            ("norm", _norm(norm, c, 2, options)),
            ("act", nn.ReLU()),
        ]
        if i < len(widths) - 1:
            parts.append(("pool", nn.MaxPool2d(2)))
        layers.append((f"block{i + 1}", nn.Sequential(OrderedDict(parts))))
        c_in = c
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten())]
    layers.append(("logits", nn.Linear(c_in, 10)))
    return nn.Sequential(OrderedDict(layers))


def mnist_mlp(
    norm: str, hidden: Sequence[int] = (100, 100), norm_options: Mapping[str, Any] | None = None
) -> nn.Sequential:
    """An MNIST MLP ``784 -> [dense -> norm -> ReLU] * len(hidden) -> 10`` (dense layers
    without bias before a norm, with bias when ``norm="none"``).

    >>> mnist_mlp("bn")(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
    """
    options = dict(norm_options or {})
    layers: list[tuple[str, nn.Module]] = [("flat", nn.Flatten())]
    width = 784
    for i, h in enumerate(hidden):
        parts = [
            ("dense", nn.Linear(width, h, bias=norm == "none")),
            ("norm", _norm(norm, h, 0, options)),
            ("act", nn.ReLU()),
        ]
        layers.append((f"layer{i + 1}", nn.Sequential(OrderedDict(parts))))
        width = h
    layers.append(("logits", nn.Linear(width, 10)))
    return nn.Sequential(OrderedDict(layers))


class NonIIDBatches:
    """Training batches that each hold only ``classes_per_batch`` classes (non-i.i.d.).

    Every batch draws ``classes_per_batch`` distinct classes, then ``batch_size`` examples
    uniformly from those classes. Batch statistics then depend on which classes were
    drawn, the situation of Ioffe 2017, Sec. 4.2. Checkpointable like ``TrainBatches``.

    >>> split = Split(torch.zeros(40, 1, 2, 2), torch.arange(40) % 10)
    >>> x, y = NonIIDBatches(split, 8, classes_per_batch=2, seed=0).next_batch()
    >>> len(set(y.tolist())) <= 2, tuple(x.shape)
    (True, (8, 1, 2, 2))
    """

    def __init__(self, split: Split, batch_size: int, *, classes_per_batch: int, seed: int) -> None:
        self.split = split
        self.batch_size = int(batch_size)
        labels = split.labels
        self.classes = sorted(set(labels.tolist()))
        if not 1 <= classes_per_batch <= len(self.classes):
            raise ValueError(
                f"classes_per_batch must lie in [1, {len(self.classes)}]; got {classes_per_batch}"
            )
        self.classes_per_batch = classes_per_batch
        self.by_class = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next ``(images, labels)`` batch."""
        g = self.generator
        picked = torch.randperm(len(self.classes), generator=g)[: self.classes_per_batch]
        pool = torch.cat([self.by_class[int(i)] for i in picked])
        idx = pool[torch.randint(len(pool), (self.batch_size,), generator=g)]
        return self.split.images.index_select(0, idx), self.split.labels.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        """The generator state (a uint8 tensor)."""
        return {"generator": self.generator.get_state(), "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.generator.set_state(state["generator"])


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


# -- report: paired claims and a final metric against a swept value --------------------


def paired_differences(
    results: ExperimentResults, minuend: str, subtrahend: str, key: str = "test_accuracy"
) -> list[float]:
    """``key(minuend) - key(subtrahend)`` for every seed finished in both variants."""
    gaps = []
    for run_a, run_b in sorted(paired_runs(results, minuend, subtrahend), key=lambda p: p[0].seed):
        a, b = run_a.metric(key), run_b.metric(key)
        if a is not None and b is not None:
            gaps.append(float(a) - float(b))
    return gaps


def paired_check(
    minuend: str,
    subtrahend: str,
    holds: Callable[[float], bool],
    key: str = "test_accuracy",
    fmt: str = "pct",
) -> Callable[[ExperimentResults], Verdict]:
    """A claim check on per-seed differences ``key(minuend) - key(subtrahend)`` (same seed,
    so the same initial weights and batch order): it holds when ``holds(gap)`` is true for
    every seed; with no seed finished in both variants the verdict is "not measured".

    >>> check = paired_check("gn-b2", "bn-b2", lambda gap: gap > 0.05)
    >>> check(ExperimentResults("x")).holds is None
    True
    """

    def check(results: ExperimentResults) -> Verdict:
        gaps = paired_differences(results, minuend, subtrahend, key)
        label = f"{minuend} − {subtrahend}, per seed"
        if not gaps:
            return Verdict(f"{label}: no seed finished in both", None)
        return Verdict(describe(label, gaps, fmt), all(holds(g) for g in gaps))

    return check


def sweep_blocks(
    results: ExperimentResults,
    groups: Mapping[str, Mapping[float, str]],
    key: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    name: str,
    group_label: str = "norm",
    logx: bool = True,
    fmt: str = "pct",
    extra: Callable[[str], str] | None = None,
) -> list[Figure | Table]:
    """A figure (mean over seeds, min-max band) and a table of ``key`` against a sweep.

    Args:
        groups: group label -> {swept value -> variant name}, e.g.
            ``{"BN": {2: "bn-b2", 4: "bn-b4"}, "GN": {...}}``.
        group_label: the table's first column header.
        key: the final metric plotted.
        extra: optional ``variant -> text`` for an extra table column (e.g. divergences).
    """
    from matplotlib.figure import Figure as MplFigure

    from bnlab.report.plots import PALETTE, png_bytes

    fig = MplFigure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    xs_all = sorted({x for points in groups.values() for x in points})
    rows = []
    scale = 100.0 if fmt == "pct" else 1.0
    for i, (label, points) in enumerate(groups.items()):
        xs, mean, lo, hi = [], [], [], []
        for x in sorted(points):
            values = results.values(points[x], key)
            if values:
                xs.append(x)
                mean.append(scale * sum(values) / len(values))
                lo.append(scale * min(values))
                hi.append(scale * max(values))
        color = PALETTE[i % len(PALETTE)]
        if xs:
            ax.plot(xs, mean, marker="o", color=color, label=label)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
        cells = [label]
        for x in xs_all:
            variant = points.get(x)
            text = (
                ""
                if variant is None
                else format_summary(summarize(results.values(variant, key)), fmt)
            )
            if variant is not None and extra is not None:
                text += extra(variant)
            cells.append(text or "-")
        rows.append(tuple(cells))
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs_all)
    ax.set_xticklabels([f"{x:g}" for x in xs_all])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if fmt == "pct" else ""))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO(png_bytes(fig))
    table = Table(
        (group_label, *(f"{x:g}" for x in xs_all)),
        tuple(rows),
        caption=f"{ylabel}: mean ± sd over seeds (n) per {xlabel}",
    )
    return [Figure(buffer.getvalue(), f"{title} (mean over seeds, band: min to max)", name), table]
