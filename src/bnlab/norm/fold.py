"""Folding batch norm into the conv or linear layer before it, for inference.

:func:`fold_bn_weights` is the tensor math; :func:`fold_bn` walks a model and returns a new
one in which every BN that directly follows a conv/linear layer is gone, its population
statistics and affine parameters absorbed into that layer's weight and bias.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn

from bnlab.norm.modules import BATCH_NORM_TYPES

__all__ = ["FOLDABLE_TYPES", "fold_bn", "fold_bn_weights"]

#: Layers a following BN can be folded into: those with one output channel per BN channel.
FOLDABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def fold_bn_weights(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    bn_weight: Tensor | None = None,
    bn_bias: Tensor | None = None,
    *,
    out_dim: int = 0,
) -> tuple[Tensor, Tensor]:
    """Weight and bias of a layer that computes ``bn(layer(x))`` in eval mode in one step.

    With ``s = bn_weight / sqrt(running_var + eps)`` per output channel ``c``::

        weight'[c] = weight[c] * s[c]
        bias'[c]   = (bias[c] - running_mean[c]) * s[c] + bn_bias[c]

    since ``bn(z) = (z - mean) * s + bn_bias`` and ``z = weight x + bias`` is linear in
    ``weight`` and ``bias``. Formed in float64, returned in ``weight``'s dtype.

    Args:
        weight: the layer's weight; its output channels along ``out_dim`` (0 for
            ``Linear`` and ``ConvNd``, 1 for ``ConvTransposeNd``).
        bias: the layer's bias ``(C,)``, or None (zero).
        running_mean, running_var: the BN's population statistics ``(C,)``.
        eps: the BN's epsilon.
        bn_weight, bn_bias: the BN's affine parameters ``(C,)``, or None (1 and 0).
        out_dim: which dim of ``weight`` holds the output channels.

    Returns:
        ``(weight', bias')``, detached, shaped like ``weight`` and ``(C,)``.

    Raises:
        ValueError: the channel counts of the layer and the BN differ.

    >>> w, b = fold_bn_weights(torch.ones(2, 3), None, torch.tensor([1.0, 2.0]),
    ...                        torch.tensor([4.0, 1.0]), 0.0, torch.tensor([2.0, 1.0]))
    >>> w.tolist(), b.tolist()
    ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [-1.0, -2.0])
    """
    channels = weight.shape[out_dim]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if tuple(t.shape) != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) to match the layer's {channels} output "
                f"channels (weight {tuple(weight.shape)}, dim {out_dim}); got {tuple(t.shape)}"
            )
    acc = torch.float64
    scale = torch.rsqrt(running_var.detach().to(acc) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.detach().to(acc)
    shift = -running_mean.detach().to(acc)
    if bias is not None:
        shift = shift + bias.detach().to(acc)
    new_bias = shift * scale
    if bn_bias is not None:
        new_bias = new_bias + bn_bias.detach().to(acc)
    shape = [1] * weight.dim()
    shape[out_dim] = channels
    new_weight = weight.detach().to(acc) * scale.reshape(shape)
    return new_weight.to(weight.dtype), new_bias.to(weight.dtype)


def _out_channels(layer: nn.Module) -> tuple[int, int]:
    """``(output channels, dim of weight holding them)`` of a foldable layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, 0
    if isinstance(layer, nn.modules.conv._ConvNd):
        if layer.transposed:
            return layer.out_channels, 1
        return layer.out_channels, 0
    raise TypeError(f"cannot fold into {type(layer).__name__}")


def _can_fold(layer: nn.Module, bn: nn.Module, use_count: dict[int, int]) -> bool:
    """A foldable layer followed by a BN with population statistics, each used once."""
    if not isinstance(layer, FOLDABLE_TYPES) or not isinstance(bn, BATCH_NORM_TYPES):
        return False
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return False  # without population statistics eval mode uses batch statistics
    if use_count.get(id(layer), 0) > 1 or use_count.get(id(bn), 0) > 1:
        return False  # a shared layer would change at its other uses too
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed and layer.groups != 1:
        return False  # grouped transposed weights interleave the output channels
    channels, _ = _out_channels(layer)
    return channels == int(getattr(bn, "num_features", -1))


def _fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer`` in place (``layer`` belongs to a copy of the user's model)."""
    _, out_dim = _out_channels(layer)
    weight: Tensor = layer.weight  # type: ignore[assignment]
    bias: Tensor | None = layer.bias  # type: ignore[assignment]
    new_weight, new_bias = fold_bn_weights(
        weight,
        bias,
        bn.running_mean,  # type: ignore[arg-type]
        bn.running_var,  # type: ignore[arg-type]
        float(bn.eps),  # type: ignore[arg-type]
        bn.weight,  # type: ignore[arg-type]
        bn.bias,  # type: ignore[arg-type]
        out_dim=out_dim,
    )
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)


def _fold_children(module: nn.Module, use_count: dict[int, int]) -> int:
    """Fold adjacent (layer, BN) pairs in every ``nn.Sequential`` under ``module``."""
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            layer, bn = module._modules[first], module._modules[second]
            if layer is not None and bn is not None and _can_fold(layer, bn, use_count):
                _fold_pair(layer, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    for child in module.children():
        folded += _fold_children(child, use_count)
    return folded


def fold_bn(model: nn.Module) -> nn.Module:
    """A new eval-mode model with each BN that directly follows a conv/linear folded into it.

    "Directly follows" means the next module of an ``nn.Sequential`` (anywhere in the
    tree), where the order of children is the order of computation; a BN called from a
    custom ``forward`` is left as it is, since the module tree does not show what feeds
    it. Folded BN layers become ``nn.Identity`` (names and indices are kept); the layer
    gets ``weight' = weight * s`` and ``bias' = (bias - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` (:func:`fold_bn_weights`), and a bias if it had none.
    BN layers without population statistics, BN after a ReLU, and layers used more than
    once are not folded. Works for ``torch.nn`` and bnlab BN layers.

    The input model is not changed (the result is a deep copy).

    Args:
        model: a model in eval mode (``model.eval()``).

    Returns:
        The folded copy, in eval mode. Its outputs equal the input model's in eval mode up
        to float rounding.

    Raises:
        ValueError: ``model`` (or one of its BN layers) is in training mode, where BN
            normalizes with batch statistics that no fixed weight can reproduce.
        TypeError: ``model`` is not an ``nn.Module``.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> folded = fold_bn(net)
    >>> type(folded[1]).__name__, folded[0].bias is not None
    ('Identity', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_bn expects an nn.Module; got {type(model).__name__}")
    training = [name for name, m in model.named_modules() if m.training]
    if training:
        where = "the model" if training[0] == "" else f"module {training[0]!r}"
        raise ValueError(
            f"fold_bn needs a model in eval mode, but {where} is in training mode (batch norm "
            f"then uses batch statistics, which cannot be folded into weights); call "
            f"model.eval() first"
        )
    folded = copy.deepcopy(model)
    use_count: dict[int, int] = {}
    for _, m in folded.named_modules(remove_duplicate=False):
        use_count[id(m)] = use_count.get(id(m), 0) + 1
    _fold_children(folded, use_count)
    return folded.eval()
