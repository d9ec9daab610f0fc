"""Frozen batch norm: fixed population statistics and affine, for fine-tuning.

``FrozenBatchNorm`` (any rank) normalizes with its buffers in every mode and learns
nothing; ``freeze_bn(model, pattern)`` returns a NEW model whose matching batch-norm layers
are frozen copies. Registered as ``"frozen"``.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.layers.act import anatomy, unknown_subclass, warn_left
from bnlab.norm.layers.modules import BATCH_NORM_TYPES
from bnlab.norm.layers.registry import register_norm
from bnlab.norm.ops import _validation
from bnlab.norm.ops.core import normalize

__all__ = ["FrozenBatchNorm", "batch_norm_layers", "freeze_bn"]


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, not
    parameters: an optimizer never sees them and ``model.train()`` changes nothing (the
    running statistics are used in both modes and never updated). Gradients still flow to
    the input. The state_dict keys are batch norm's (``num_batches_tracked`` included), so
    a ``BatchNorm2d`` checkpoint loads into it and back. Rank-agnostic: any ``(N, C, *)``.

    Args:
        num_features: C.
        eps: added to the variance before the square root.
        device, dtype: where and in what dtype the buffers live.

    Raises:
        ValueError: (at call time) an input without C channels in dim 1.

    Shape:
        input ``(N, C, *)``; output the same.

    >>> bn = nn.BatchNorm2d(3).eval()
    >>> frozen = FrozenBatchNorm.from_batch_norm(bn)
    >>> x = torch.randn(2, 3, 4, 4)
    >>> bool(torch.allclose(frozen.train()(x), bn(x), atol=1e-6))
    True
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int; got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1; got {num_features}")
        if eps < 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite number >= 0; got {eps}")
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """A frozen copy of a batch-norm layer (bnlab's, torch's or timm's): its current
        running statistics, affine (1 and 0 when it has none) and eps, and for a batch
        norm + activation layer (``BatchNormAct2d``) its ``drop`` and ``act`` modules,
        applied after the normalization. ``bn`` is not changed.

        Raises:
            TypeError: ``bn`` is not a batch-norm layer, or a subclass whose ``forward``
                bnlab does not know (see :func:`bnlab.norm.layers.act.anatomy`).
            ValueError: ``bn`` keeps no running statistics (there is nothing to freeze).
        """
        if not isinstance(bn, BATCH_NORM_TYPES):
            raise TypeError(f"expected a batch-norm layer; got {type(bn).__name__}")
        shape = anatomy(bn)
        if shape is None:
            raise TypeError(f"cannot freeze it: {unknown_subclass(bn)}")
        running_mean = getattr(bn, "running_mean", None)
        running_var = getattr(bn, "running_var", None)
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{type(bn).__name__} has no running statistics (track_running_stats=False); "
                "a frozen layer needs population statistics to normalize with"
            )
        num_features = int(running_mean.shape[0])
        eps = float(getattr(bn, "eps"))  # noqa: B009 (nn.Module's typing)
        frozen = cls(num_features, eps, device=running_mean.device)
        with torch.no_grad():
            frozen.running_mean = running_mean.detach().clone()
            frozen.running_var = running_var.detach().clone()
            weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
            dtype = running_mean.dtype
            frozen.weight = (
                weight.detach().clone() if weight is not None else frozen.weight.to(dtype)
            )
            frozen.bias = bias.detach().clone() if bias is not None else frozen.bias.to(dtype)
            tracked = getattr(bn, "num_batches_tracked", None)
            if tracked is not None:
                frozen.num_batches_tracked = tracked.detach().clone()
        if shape.tail is not None:  # the same child names, so the same state_dict keys
            frozen.drop, frozen.act = copy.deepcopy(bn.drop), copy.deepcopy(bn.act)
        return frozen

    def forward(self, input: Tensor) -> Tensor:
        _validation.check_float_tensor("input", input)
        if input.dim() < 2 or input.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm({self.num_features}) expects input of shape "
                f"(N, {self.num_features}, *); got shape {tuple(input.shape)}"
            )
        y = normalize(input, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        act, drop = self._modules.get("act"), self._modules.get("drop")
        if act is not None and drop is not None:  # frozen from a batch norm + activation
            y = act(drop(y))
        return y

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A checkpoint of a layer without affine or counter still loads (1, 0, 0).
        state_dict.setdefault(prefix + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def batch_norm_layers(model: nn.Module) -> list[str]:
    """Qualified names of the batch-norm layers (bnlab's and torch's) in ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, BATCH_NORM_TYPES)]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def freeze_bn(model: nn.Module, pattern: str | Sequence[str] = "*") -> nn.Module:
    """A NEW model in which the batch-norm layers whose names match ``pattern`` are frozen.

    Every batch-norm layer (bnlab's ``BatchNorm*d`` and variants, ``torch.nn``'s) whose
    qualified name (as in ``named_modules``, e.g. ``"layer2.0.bn1"``) matches one of the
    shell-style patterns becomes a :class:`FrozenBatchNorm` with its current statistics
    and affine. ``*`` matches dots too, so ``"layer2.*"`` freezes everything under
    ``layer2``. ``model`` itself is deep-copied first and never changed (STYLE.md §6);
    training modes and every other weight are kept. A batch norm + activation layer
    keeps its activation; a subclass whose ``forward`` bnlab does not know is left as it
    is, and a :class:`~bnlab.norm.layers.act.RewriteWarning` names it.

    Args:
        model: any module (a batch-norm layer itself is matched by the name ``""``).
        pattern: one pattern or a list of them (default: every layer).

    Returns:
        The converted copy.

    Raises:
        ValueError: no batch-norm layer matches (the message lists the layer names), or a
            matching layer keeps no running statistics.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
    ...                     nn.BatchNorm2d(4))
    >>> frozen = freeze_bn(net, "3")
    >>> type(frozen[1]).__name__, type(frozen[3]).__name__, type(net[3]).__name__
    ('BatchNorm2d', 'FrozenBatchNorm', 'BatchNorm2d')
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns:
        raise ValueError("freeze_bn needs at least one name pattern; got an empty list")
    names = batch_norm_layers(model)
    selected = [n for n in names if _matches(n, patterns)]
    if not selected:
        raise ValueError(
            f"no batch-norm layer matches {patterns}; the batch-norm layers are: "
            f"{', '.join(repr(n) for n in names) or '(none)'}"
        )
    if "" in selected:  # the model is itself a batch-norm layer
        frozen = FrozenBatchNorm.from_batch_norm(model)
        frozen.train(model.training)
        return frozen
    new = copy.deepcopy(model)
    left: dict[str, str] = {}
    for name in selected:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name)
        bn = parent.get_submodule(child)
        if anatomy(bn) is None:
            left[name] = unknown_subclass(bn)
            continue
        frozen = FrozenBatchNorm.from_batch_norm(bn)
        frozen.train(bn.training)
        setattr(parent, child, frozen)
    warn_left("freeze_bn", left)
    return new


def _frozen(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims  # rank-agnostic
    # A frozen layer learns nothing: batch-norm options about learning are accepted (so a
    # model builder can switch norms) and ignored; eps, device and dtype apply.
    options = {k: v for k, v in kwargs.items() if k in ("eps", "device", "dtype")}
    return FrozenBatchNorm(num_features, **options)


register_norm(
    "frozen",
    _frozen,
    "frozen batch norm: fixed statistics and affine as buffers (mean 0, var 1 until loaded)",
)
