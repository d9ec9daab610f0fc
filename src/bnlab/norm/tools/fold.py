"""Folding batch norm into the conv or linear layer before it, for inference.

:func:`fold_bn_weights` is the tensor math; :func:`fold_bn` reads the model's graph
(``bnlab.norm.tools.graph``) and returns a new model in which every BN that directly follows a
conv/linear layer is gone, its population statistics and affine parameters absorbed into
that layer's weight and bias.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, overload

import torch
from torch import Tensor, nn

from bnlab.norm.layers.act import anatomy, unknown_subclass
from bnlab.norm.layers.modules import BATCH_NORM_TYPES
from bnlab.norm.tools.graph import FoldWarning, RewriteReport, find_pairs

__all__ = ["FOLDABLE_TYPES", "FoldWarning", "fold_bn", "fold_bn_weights"]

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


def _why_not(layer: nn.Module, bn: nn.Module) -> str:
    """Why ``bn`` cannot be folded into ``layer`` ("" when it can)."""
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        return "no population statistics (track_running_stats=False): eval uses the batch's"
    if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed and layer.groups != 1:
        return "grouped transposed convolution (its weights interleave the output channels)"
    channels, _ = _out_channels(layer)
    if channels != int(getattr(bn, "num_features", -1)):
        return f"{channels} output channels before a BN of {bn.num_features}"
    return ""


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


@overload
def fold_bn(model: nn.Module, *, return_report: Literal[False] = ...) -> nn.Module: ...


@overload
def fold_bn(
    model: nn.Module, *, return_report: Literal[True]
) -> tuple[nn.Module, RewriteReport]: ...


def fold_bn(
    model: nn.Module, *, return_report: bool = False
) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """A new eval-mode model with each BN that directly follows a conv/linear folded into it.

    "Directly follows" is read from the model's ``torch.fx`` graph: the BN is the only
    consumer of the layer's output, wherever the two are called (``nn.Sequential``, a
    custom ``forward``, a residual block). A model FX cannot trace falls back to adjacent
    children of ``nn.Sequential``. Folded BN layers become ``nn.Identity`` (names, indices
    and the model's class and ``forward`` are kept); a batch norm + activation layer
    (timm's or bnlab's ``BatchNormAct2d``) becomes its activation (after its dropout
    module, if that is not an identity); the layer
    gets ``weight' = weight * s`` and ``bias' = (bias - mean) * s + beta`` with
    ``s = gamma / sqrt(var + eps)`` (:func:`fold_bn_weights`), and a bias if it had none.
    BN layers without population statistics, BN after a ReLU or an addition, layers
    used more than once, and batch-norm subclasses that override ``forward`` in a way
    bnlab does not know (:func:`~bnlab.norm.layers.act.anatomy`) are left, each with its
    reason in the report; a :class:`FoldWarning` lists them. Works for ``torch.nn``,
    timm and bnlab BN layers.

    The input model is not changed (the result is a deep copy).

    Args:
        model: a model in eval mode (``model.eval()``).
        return_report: also return the :class:`~bnlab.norm.tools.graph.RewriteReport`.

    Returns:
        The folded copy, in eval mode (and the report). Its outputs equal the input
        model's in eval mode up to float rounding.

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
    report = RewriteReport("fold_bn")
    pairs = find_pairs(
        folded,
        lambda m: isinstance(m, FOLDABLE_TYPES),
        lambda m: isinstance(m, BATCH_NORM_TYPES),
        report,
    )
    for pair in pairs:
        layer, bn = folded.get_submodule(pair.first), folded.get_submodule(pair.second)
        shape = anatomy(bn)
        why = unknown_subclass(bn) if shape is None else _why_not(layer, bn)
        if why or shape is None:
            report.left[pair.second] = why
            continue
        _fold_pair(layer, bn)
        folded.set_submodule(pair.second, nn.Identity() if shape.tail is None else shape.tail)
        kept = "" if shape.tail is None else f" (its {type(shape.tail).__name__} kept)"
        report.done.append(f"{pair.first} <- {pair.second}{kept}")
    for name, m in folded.named_modules():
        if isinstance(m, BATCH_NORM_TYPES) and name not in report.left:
            report.left[name] = (
                "not the only consumer of a conv/linear layer's output (e.g. BN after a "
                "ReLU, an addition or a pooling layer), or a layer called more than once"
            )
    if report.left:
        warnings.warn(str(report), FoldWarning, stacklevel=2)
    folded.eval()
    return (folded, report) if return_report else folded
