"""Small MNIST networks whose norm layer is a registry name (``bnlab.norm.get_norm``):
the networks of the experiments beyond the seeds (batch size, learning rate, batch renorm,
precise statistics).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch  # noqa: F401  (the doctests' namespace)
from torch import nn

from bnlab.norm.layers.registry import get_norm

__all__ = ["BACKEND", "mnist_mlp", "small_cnn"]

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
