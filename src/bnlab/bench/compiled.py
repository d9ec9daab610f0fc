"""Compiled rows: torch's batch norm vs bnlab's, in eager mode and under ``torch.compile``.

A batch-norm layer alone at the large shapes (training forward+backward, inference), and
a ResNet-18-shaped training step, each in both memory layouts. The four candidates of a
row (torch eager, bnlab eager, torch compiled, bnlab compiled) are timed in the same
interleaved rounds, so their ratios are measured side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.bench.timing import Timing, interleaved, paired_ratio
from bnlab.models.resnet import ResNet18
from bnlab.norm.layers.modules import BatchNorm2d

__all__ = ["CompiledRow", "compiled_rows", "format_compiled"]

#: The layer shapes: the large ones of ``bnlab bench`` (where the fused kernel runs).
LAYER_SHAPES: tuple[tuple[int, int, int, int], ...] = ((64, 64, 56, 56), (32, 128, 28, 28))
QUICK_LAYER_SHAPES: tuple[tuple[int, int, int, int], ...] = ((4, 8, 16, 16),)
CANDIDATES = ("torch", "bnlab", "torch-compiled", "bnlab-compiled")


@dataclass
class CompiledRow:
    """One row: what was timed, and the per-call time of each candidate."""

    what: str  # "layer train f+b", "layer eval", "resnet18 train step"
    shape: tuple[int, ...]
    layout: str
    times: dict[str, Timing]

    def ratio(self, numerator: str, denominator: str) -> float:
        """``numerator / denominator``, paired by round."""
        return paired_ratio(self.times[numerator], self.times[denominator])

    def gap_us(self, numerator: str, denominator: str) -> float:
        """How much longer ``numerator`` takes per call (microseconds; < 0 when faster)."""
        return (self.times[numerator].median - self.times[denominator].median) * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "shape": list(self.shape),
            "layout": self.layout,
            "times": {name: t.as_dict() for name, t in self.times.items()},
            "eager_ratio": self.ratio("bnlab", "torch"),
            "compiled_ratio": self.ratio("bnlab-compiled", "torch-compiled"),
            "bnlab_compiled_vs_torch_eager": self.ratio("bnlab-compiled", "torch"),
        }


def _formatted(t: Tensor, layout: str) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def _layer_candidates(
    shape: tuple[int, int, int, int], layout: str, training: bool
) -> dict[str, Callable[[], object]]:
    """The four candidates for one batch-norm layer (``training``: forward + backward)."""
    x = _formatted(torch.randn(shape), layout).requires_grad_(training)
    grad = _formatted(torch.randn(shape), layout)
    layers = {
        "torch": nn.BatchNorm2d(shape[1]).train(training),
        "bnlab": BatchNorm2d(shape[1]).train(training),
    }
    modules: dict[str, Callable[[Tensor], Tensor]] = dict(layers)
    for name, layer in layers.items():
        modules[f"{name}-compiled"] = torch.compile(layer, dynamic=False)

    def call(module: Callable[[Tensor], Tensor]) -> Callable[[], object]:
        if training:
            return lambda: module(x).backward(grad)
        return lambda: module(x)

    with torch.set_grad_enabled(training):
        return {name: call(modules[name]) for name in CANDIDATES}


def _resnet_candidates(
    batch: int, width: int, size: int, layout: str
) -> dict[str, Callable[[], object]]:
    """One SGD step of a ResNet-18-shaped network with each batch norm (eager, compiled)."""
    x = _formatted(torch.randn(batch, 3, size, size), layout)
    target = torch.randint(0, 10, (batch,))
    steps = {}
    for name, norm in (("torch", nn.BatchNorm2d), ("bnlab", BatchNorm2d)):
        torch.manual_seed(0)
        model = _formatted_model(ResNet18(width=width, norm=norm), layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for suffix, net in (("", model), ("-compiled", torch.compile(model, dynamic=False))):
            steps[name + suffix] = _sgd_step(net, opt, x, target)
    return steps


def _formatted_model(model: nn.Module, layout: str) -> nn.Module:
    if layout == "channels_last":
        return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def _sgd_step(
    net: Callable[[Tensor], Tensor], opt: torch.optim.Optimizer, x: Tensor, target: Tensor
) -> Callable[[], object]:
    def step() -> object:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        return None

    return step


def compiled_rows(
    *,
    layouts: Sequence[str] = ("contiguous", "channels_last"),
    quick: bool = False,
    budget_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 50,
    on_row: Callable[[CompiledRow], None] | None = None,
) -> list[CompiledRow]:
    """Time every row; compilation happens in the warm-up calls, before any timing.

    Args:
        layouts: ``"contiguous"`` (NCHW) and/or ``"channels_last"``.
        quick: tiny shapes and a tiny network (a smoke run of every path).
        budget_s, min_rounds, max_rounds: passed to :func:`~bnlab.bench.timing.interleaved`.
        on_row: called with each finished row (progress).
    """
    shapes = QUICK_LAYER_SHAPES if quick else LAYER_SHAPES
    resnet = (2, 4, 32) if quick else (16, 16, 96)  # batch, width, image size
    rows: list[CompiledRow] = []

    def run(what: str, shape: tuple[int, ...], layout: str, cands: dict) -> None:
        times = interleaved(
            cands, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s, warmup=3
        )
        rows.append(CompiledRow(what, shape, layout, times))
        if on_row is not None:
            on_row(rows[-1])

    for layout in layouts:
        for shape in shapes:
            run("layer train f+b", shape, layout, _layer_candidates(shape, layout, True))
            run("layer eval", shape, layout, _layer_candidates(shape, layout, False))
        batch, width, size = resnet
        shape = (batch, 3, size, size)
        run("resnet18 train step", shape, layout, _resnet_candidates(batch, width, size, layout))
        torch._dynamo.reset()  # compiled graphs of this layout are not needed again
    return rows


def format_compiled(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (:meth:`CompiledRow.as_dict`) as a text table: per-call medians in ms, and the
    bnlab/torch ratios paired by round (< 1: bnlab is faster)."""
    head = (
        f"{'what':20s} {'shape':16s} {'layout':13s} {'torch':>9s} {'bnlab':>9s} "
        f"{'torch-c':>9s} {'bnlab-c':>9s} {'eager':>6s} {'compiled':>8s}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        ms = " ".join(f"{row['times'][name]['median_s'] * 1e3:9.3f}" for name in CANDIDATES)
        lines.append(
            f"{row['what']:20s} {'x'.join(map(str, row['shape'])):16s} {row['layout']:13s} "
            f"{ms} {row['eager_ratio']:6.3f} {row['compiled_ratio']:8.3f}"
        )
    lines.append(
        "ms per call (median); -c: under torch.compile; eager, compiled: bnlab/torch paired "
        "by round (< 1: bnlab faster)"
    )
    return "\n".join(lines)
