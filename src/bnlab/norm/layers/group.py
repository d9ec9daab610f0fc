"""Group, layer and instance normalization on the shared core, for comparison with batch norm.

All three normalize each example on its own (no batch statistics, no running buffers);
they differ only in how the channels are grouped: ``LayerNorm`` is one group,
``InstanceNorm`` is one group per channel (Wu & He 2018, Fig. 2). Registered as
``"gn"``, ``"ln"`` and ``"in"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.norm.layers.registry import register_norm
from bnlab.norm.ops import _validation
from bnlab.norm.ops.core import batch_stats, channel_shape, normalize

__all__ = ["GROUP_NORM_BACKENDS", "GroupNorm", "InstanceNorm", "LayerNorm", "default_num_groups"]

#: ``backend=`` values: torch's fused kernel, or the core's readable math (equal, tested).
GROUP_NORM_BACKENDS = ("native", "core")

# Options a model builder passes to any norm layer that only batch norm uses; a per-example
# norm has no running statistics, so they are accepted and ignored (as "none" does).
_BATCH_ONLY_OPTIONS = ("momentum", "decay", "track_running_stats", "backend")


def default_num_groups(num_channels: int, preferred: int = 32) -> int:
    """The largest divisor of ``num_channels`` that is at most ``preferred`` (Wu & He use 32).

    >>> default_num_groups(64), default_num_groups(12), default_num_groups(1)
    (32, 12, 1)
    """
    if num_channels < 1 or preferred < 1:
        raise ValueError(
            f"num_channels and preferred must be >= 1; got {num_channels} and {preferred}"
        )
    for g in range(min(preferred, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1  # unreachable: 1 divides everything


class GroupNorm(nn.Module):
    """Group normalization (Wu & He 2018): statistics per example over groups of channels.

    The channels are split into ``num_groups`` groups of ``C / G``; each example's group is
    normalized with its own mean and biased variance over ``(C / G, *spatial)``, then a
    per-channel affine applies: ``y = (x - E_g[x]) / sqrt(Var_g[x] + eps) * weight + bias``.
    With ``backend="core"`` the statistics come from the core's ``batch_stats`` on an
    ``(1, N * G, rest)`` view, so the formula (and its wider accumulation) is the batch-norm
    one with other axes; ``backend="native"`` (default) runs ``torch.nn.functional.
    group_norm``, the same function (tested to 1e-12 in float64) about 8x faster on small
    inputs, where the core's many small ops dominate. Behaves the same in training and
    eval mode; there are no buffers.

    Args:
        num_groups: G; must divide ``num_channels``. 1 gives layer norm over (C, H, W),
            ``num_channels`` gives instance norm.
        num_channels: C.
        eps: added to the variance before the square root.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0).
        device, dtype: where and in what dtype the parameters live.
        backend: keyword-only, ``"native"`` or ``"core"`` (:data:`GROUP_NORM_BACKENDS`).

    Raises:
        ValueError: G does not divide C, an unknown backend, or (at call time) a wrong
            channel count or rank.
        TypeError: a non-float input.

    Shape:
        input ``(N, C, *)`` with any number of spatial dims (also ``(N, C)``); output the same.

    >>> gn = GroupNorm(2, 4)
    >>> y = gn(torch.randn(3, 4, 5, 5))
    >>> bool(y[0, :2].mean().abs() < 1e-5)
    True
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "native",
    ) -> None:
        super().__init__()
        if backend not in GROUP_NORM_BACKENDS:
            raise ValueError(
                f"backend must be one of {', '.join(GROUP_NORM_BACKENDS)}; got {backend!r}"
            )
        for name, value in (("num_groups", num_groups), ("num_channels", num_channels)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_groups must divide num_channels; got {num_groups} groups for "
                f"{num_channels} channels (try default_num_groups({num_channels}) = "
                f"{default_num_groups(num_channels)})"
            )
        if eps < 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite number >= 0; got {eps}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.backend = backend
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, **factory))
            self.bias = nn.Parameter(torch.zeros(num_channels, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """Weight back to 1 and bias to 0."""
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        _validation.check_float_tensor("input", input)
        if input.dim() < 2 or input.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.num_channels}, *); "
                f"got shape {tuple(input.shape)}"
            )
        n, g = input.shape[0], self.num_groups
        per_group = input.numel() // max(1, n * g)
        if per_group == 1 and n > 0:
            raise ValueError(
                f"{type(self).__name__} with {g} groups needs more than one value per group; "
                f"input of shape {tuple(input.shape)} has one (use fewer groups)"
            )
        if self.backend == "native":
            return F.group_norm(input, g, self.weight, self.bias, self.eps)
        # (N, C, *) -> (1, N*G, rest): each "channel" of this view is one (example, group),
        # so batch statistics over dims 0 and 2 are the per-example group statistics.
        grouped = input.reshape(1, n * g, per_group)
        mean, var = batch_stats(grouped)
        y = normalize(grouped, mean, var, None, None, self.eps).reshape(input.shape)
        if self.weight is None:
            return y
        shape = channel_shape(input.dim(), self.num_channels)
        out = y * self.weight.to(y.dtype).reshape(shape)
        if self.bias is not None:
            out = out + self.bias.to(y.dtype).reshape(shape)
        return out

    def extra_repr(self) -> str:
        text = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        return text + (f", backend={self.backend!r}" if self.backend != "native" else "")


class LayerNorm(GroupNorm):
    """Layer normalization over ``(C, *spatial)`` of each example: ``GroupNorm(1, C)``.

    Unlike ``torch.nn.LayerNorm`` (an element-wise affine over the normalized shape), the
    affine here is per channel, as in group norm, so the layer is shape-agnostic; without
    affine it equals ``torch.nn.functional.layer_norm(x, x.shape[1:])``.

    >>> LayerNorm(3)(torch.randn(2, 3, 4)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-5, affine: bool = True, **kw: Any
    ) -> None:
        super().__init__(1, num_channels, eps, affine, **kw)

    def extra_repr(self) -> str:
        text = f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
        return text + (f", backend={self.backend!r}" if self.backend != "native" else "")


class InstanceNorm(GroupNorm):
    """Instance normalization: each channel of each example on its own, ``GroupNorm(C, C)``.

    Without running statistics (``torch.nn.InstanceNorm2d``'s default); with affine by
    default (unlike torch) so that it compares like for like with the other layers.

    >>> InstanceNorm(3)(torch.randn(2, 3, 4, 4)).shape
    torch.Size([2, 3, 4, 4])
    """

    def __init__(
        self, num_channels: int, eps: float = 1e-5, affine: bool = True, **kw: Any
    ) -> None:
        super().__init__(num_channels, num_channels, eps, affine, **kw)

    def extra_repr(self) -> str:
        text = f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
        return text + (f", backend={self.backend!r}" if self.backend != "native" else "")


def _per_example_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in _BATCH_ONLY_OPTIONS}


def _group_norm(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims  # rank-agnostic
    options = _per_example_options(kwargs)
    groups = options.pop("num_groups", None)
    if groups is None:
        groups = default_num_groups(num_features)
    return GroupNorm(groups, num_features, **options)


def _layer_norm(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims
    return LayerNorm(num_features, **_per_example_options(kwargs))


def _instance_norm(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims
    return InstanceNorm(num_features, **_per_example_options(kwargs))


register_norm(
    "gn",
    _group_norm,
    "group norm (Wu & He 2018); num_groups= (default: largest divisor of C up to 32)",
)
register_norm("ln", _layer_norm, "layer norm over (C, *spatial) per example (group norm, G=1)")
register_norm("in", _instance_norm, "instance norm per example and channel (group norm, G=C)")
