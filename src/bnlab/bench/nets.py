"""Whole-network benchmarks: the deep-CNN training step, and inference after ``fold_bn``.

``deep_cnn_step`` times one Adam step of the seed-000 network (batch 64) without batch
norm, with bnlab's default batch norm and with
``torch.nn.BatchNorm2d``, interleaved;
``fold_latency`` times single-image inference of the same network before and after
folding its batch norm into the convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.bench.timing import interleaved, paired_ratio
from bnlab.models.deep_cnn import DeepCNN
from bnlab.norm.tools.fold import fold_bn

__all__ = ["NET_VARIANTS", "build_variant", "deep_cnn_step", "fold_latency", "make_step"]

#: name -> the ``DeepCNN(norm=...)`` of that variant: the network without BN, with bnlab's
#: BN as the experiments build it, and with torch's BN.
NET_VARIANTS: dict[str, str] = {
    "no-bn": "none",
    "bnlab-bn": "bn",
    "torch-bn": "torch-bn",
}


def build_variant(name: str, num_conv_layers: int = 19) -> nn.Module:
    """The deep CNN of variant ``name`` (a key of :data:`NET_VARIANTS`)."""
    return DeepCNN(norm=NET_VARIANTS[name], num_conv_layers=num_conv_layers)


def make_step(model: nn.Module, batch: int, num_classes: int = 10) -> Callable[[], float]:
    """One training step of ``model`` on a fixed random MNIST-shaped batch (the seed's loss).

    Mean sigmoid cross-entropy on one-hot labels, Adam with learning rate 0.002, as
    seed 000. Returns a function that runs the step and returns the loss.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    target = F.one_hot(labels, num_classes).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    model.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def deep_cnn_step(
    batch: int = 64,
    *,
    budget_s: float = 20.0,
    min_rounds: int = 10,
    max_rounds: int = 200,
    num_conv_layers: int = 19,
) -> dict[str, Any]:
    """Median training-step time of the deep CNN in each of :data:`NET_VARIANTS`.

    The three networks are stepped in interleaved rounds (see
    :func:`bnlab.bench.timing.interleaved`), so machine noise hits them alike.

    Returns:
        ``{"batch", "times": {variant: Timing dict}, "ratios": {"bnlab-bn/no-bn", ...}}``.
    """
    torch.manual_seed(0)
    steps = {name: make_step(build_variant(name, num_conv_layers), batch) for name in NET_VARIANTS}
    timings = interleaved(
        steps, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s, warmup=3
    )
    return {
        "batch": batch,
        "num_conv_layers": num_conv_layers,
        "times": {name: t.as_dict() for name, t in timings.items()},
        "ratios": {f"{a}/{b}": paired_ratio(timings[a], timings[b]) for a, b in _RATIOS},
        "min_ratios": {f"{a}/{b}": timings[a].min / timings[b].min for a, b in _RATIOS},
    }


#: The step-time ratios reported (numerator, denominator).
_RATIOS = (
    ("bnlab-bn", "no-bn"),
    ("torch-bn", "no-bn"),
    ("bnlab-bn", "torch-bn"),
)


def fold_latency(
    *,
    budget_s: float = 5.0,
    min_rounds: int = 20,
    max_rounds: int = 500,
    num_conv_layers: int = 19,
) -> dict[str, Any]:
    """Single-image inference time of the deep CNN with BN, and after :func:`fold_bn`.

    The BN layers get non-trivial population statistics first, and the folded model's
    output is checked against the original's (``max_rel_diff``).

    Returns:
        ``{"times": {"bn": ..., "folded": ...}, "speedup", "max_rel_diff"}``.
    """
    torch.manual_seed(0)
    model = DeepCNN(norm="bn", num_conv_layers=num_conv_layers)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    model.eval()
    folded = fold_bn(model)
    x = torch.randn(1, 1, 28, 28)

    def infer(net: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return net(x)

        return run

    with torch.inference_mode():
        ref, out = model(x), folded(x)
    rel = float((out - ref).abs().max() / ref.abs().max())
    timings = interleaved(
        {"bn": infer(model), "folded": infer(folded)},
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        budget_s=budget_s,
    )
    return {
        "times": {name: t.as_dict() for name, t in timings.items()},
        "speedup": paired_ratio(timings["bn"], timings["folded"]),
        "min_speedup": timings["bn"].min / timings["folded"].min,
        "max_rel_diff": rel,
    }
