"""TensorFlow-faithful initializers: glorot-uniform kernels, zero biases, truncated normal.

The seeds ran ``tf.layers`` / Keras layers, whose defaults differ from PyTorch's
(``kaiming_uniform(a=sqrt(5))`` kernels and uniform biases). Experiments that reproduce a
seed call these so their starting point has the seed's distribution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnlab.errors import UnknownNameError

__all__ = [
    "INITIALIZERS",
    "fans",
    "glorot_uniform_",
    "tf_init_",
    "truncated_normal_",
    "zeros_",
]


def fans(weight: Tensor) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a Linear ``(out, in)`` or Conv ``(out, in, *k)`` weight.

    As in TF/Keras: ``fan_in = in * prod(k)``, ``fan_out = out * prod(k)``.

    >>> fans(torch.empty(8, 4, 3, 3))
    (36, 72)

    Raises:
        ValueError: ``weight`` has fewer than 2 dims.
    """
    if weight.dim() < 2:
        raise ValueError(
            f"fans need a weight with at least 2 dims (out, in, ...); got {tuple(weight.shape)}"
        )
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def glorot_uniform_(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``weight`` in place from ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``.

    TF's and Keras's default kernel initializer (Glorot & Bengio 2010).
    """
    fan_in, fan_out = fans(weight)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-limit, limit, generator=generator)


def truncated_normal_(
    tensor: Tensor, std: float, mean: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """Fill ``tensor`` in place from ``N(mean, std^2)`` with draws beyond 2 std redrawn.

    The distribution of ``tf.truncated_normal(shape, mean, stddev)`` (the seed's conv
    weights use ``stddev=0.05``); its standard deviation is about ``0.88 * std``.

    Raises:
        ValueError: ``std`` is not positive.
    """
    if not std > 0:
        raise ValueError(f"std must be > 0; got {std}")
    return nn.init.trunc_normal_(
        tensor, mean=mean, std=std, a=mean - 2 * std, b=mean + 2 * std, generator=generator
    )


def zeros_(tensor: Tensor) -> Tensor:
    """Fill ``tensor`` with zeros in place (TF's default bias initializer)."""
    with torch.no_grad():
        return tensor.zero_()


#: Kernel initializer names accepted by :func:`tf_init_` (and the experiment configs).
INITIALIZERS = ("glorot-uniform", "truncated-normal")


def tf_init_(module: nn.Module, *, kernel: str = "glorot-uniform", std: float = 0.05) -> nn.Module:
    """Re-initialize every Linear and Conv layer of ``module`` as TF would; return ``module``.

    Kernels: ``"glorot-uniform"`` (the ``tf.layers``/Keras default) or ``"truncated-normal"``
    with standard deviation ``std`` (before truncation). Biases: zeros. Norm layers keep
    their own initialization (scale 1, shift 0, as TF's).

    Raises:
        UnknownNameError: ``kernel`` is not one of :data:`INITIALIZERS`.

    >>> net = tf_init_(nn.Linear(4, 3))
    >>> bool(net.bias.eq(0).all()), bool(net.weight.abs().max() <= (6 / 7) ** 0.5)
    (True, True)
    """
    if kernel not in INITIALIZERS:
        raise UnknownNameError("initializer", kernel, INITIALIZERS)
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.modules.conv._ConvNd):
            if kernel == "glorot-uniform":
                glorot_uniform_(layer.weight)
            else:
                truncated_normal_(layer.weight, std)
            if layer.bias is not None:
                zeros_(layer.bias)
    return module
