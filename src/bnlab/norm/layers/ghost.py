"""Ghost (virtual) batch normalization (Hoffer, Hubara & Soudry 2017): a large batch is
normalized in small virtual batches, each with its own statistics.

``GhostBatchNorm1d/2d/3d`` override only batch norm's ``_batch_norm`` hook; eval mode is
batch norm's. Registered as ``"ghost"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.layers.modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    _BatchNorm,
    check_any_rank,
)
from bnlab.norm.layers.registry import register_norm
from bnlab.norm.ops import _validation
from bnlab.norm.ops.core import batch_stats, normalize, unbiased_var, update_running_stats

__all__ = [
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "ghost_sizes",
]


def ghost_sizes(batch_size: int, virtual_batch_size: int, values_per_example: int) -> list[int]:
    """Split ``batch_size`` examples into virtual batches of ``virtual_batch_size``.

    The last virtual batch holds the remainder; if that remainder would hold a single
    value per channel (one example of an ``(N, C)`` input), it joins the previous one,
    because one value has no variance.

    >>> ghost_sizes(10, 4, 1), ghost_sizes(9, 4, 1), ghost_sizes(9, 4, 25), ghost_sizes(3, 8, 1)
    ([4, 4, 2], [4, 5], [4, 4, 1], [3])
    """
    if virtual_batch_size < 1:
        raise ValueError(f"virtual_batch_size must be >= 1; got {virtual_batch_size}")
    full, rest = divmod(batch_size, virtual_batch_size)
    sizes = [virtual_batch_size] * full
    if rest:
        if rest * values_per_example == 1 and sizes:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes


class GhostBatchNorm(_BatchNorm):
    """Batch norm whose training statistics come from virtual batches of the input.

    Training: the batch is split along dim 0 (:func:`ghost_sizes`); virtual batch ``k``
    is normalized with its own mean and biased variance. The running statistics move
    once per call toward the example-weighted average of the virtual batches' means and
    unbiased variances, the population estimate of Ioffe & Szegedy 2015, Alg. 2
    (``E[x] = E_B[mu_B]``, ``Var[x] = m/(m-1) E_B[sigma_B^2]``) for batches of size m, so
    inference matches what training normalized with. Eval: batch norm with the running
    statistics. A batch no larger than ``virtual_batch_size`` is plain batch norm.

    Extra keyword-only argument: ``virtual_batch_size`` (default 32).

    Any rank: ``(N, C, *)`` (``GhostBatchNorm1d/2d/3d`` are the rank-checked drop-ins).

    >>> GhostBatchNorm(3, virtual_batch_size=2)(torch.randn(4, 3, 5)).shape
    torch.Size([4, 3, 5])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        check_any_rank(type(self).__name__, input)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        virtual_batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int):
            raise TypeError(
                f"virtual_batch_size must be an int; got {type(virtual_batch_size).__name__}"
            )
        if virtual_batch_size < 2:
            raise ValueError(
                f"virtual_batch_size must be >= 2 (a single example has no batch "
                f"statistics); got {virtual_batch_size}"
            )
        self.virtual_batch_size = virtual_batch_size
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs
        )

    def _batch_norm(
        self,
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
    ) -> Tensor:
        if not training or input.shape[0] <= self.virtual_batch_size:
            return super()._batch_norm(input, running_mean, running_var, training, momentum)
        per_example = _validation.values_per_channel(input[:1])
        sizes = ghost_sizes(input.shape[0], self.virtual_batch_size, per_example)
        outputs, means, variances, weights = [], [], [], []
        for chunk in input.split(sizes, dim=0):
            mean, var = batch_stats(chunk)
            outputs.append(normalize(chunk, mean, var, self.weight, self.bias, self.eps))
            count = chunk.shape[0] * per_example
            means.append(mean)
            variances.append(unbiased_var(var, count))
            weights.append(chunk.shape[0])
        if running_mean is not None and running_var is not None:
            w = torch.tensor(weights, dtype=means[0].dtype) / input.shape[0]
            pop_mean = (torch.stack(means) * w[:, None]).sum(0)
            pop_var = (torch.stack(variances) * w[:, None]).sum(0)
            update_running_stats(running_mean, running_var, pop_mean, pop_var, momentum)
        return torch.cat(outputs, dim=0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(GhostBatchNorm):
    """Ghost batch norm over ``(N, C)`` or ``(N, C, L)`` input. See :class:`GhostBatchNorm2d`.

    >>> GhostBatchNorm1d(4, virtual_batch_size=4)(torch.randn(12, 4)).shape
    torch.Size([12, 4])
    """

    _check_input_dim = BatchNorm1d._check_input_dim


class GhostBatchNorm2d(GhostBatchNorm):
    """Ghost batch normalization over ``(N, C, H, W)`` input.

    Training: each virtual batch of ``virtual_batch_size`` examples is batch-normalized on
    its own: ``y_k = (x_k - mu_k) / sqrt(var_k + eps) * weight + bias``. Eval: batch norm.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype, bias,
            decay, backend: as :class:`bnlab.norm.BatchNorm2d`.
        virtual_batch_size: keyword-only; examples per virtual batch (>= 2, default 32).

    Raises:
        ValueError: ``virtual_batch_size < 2``, or (at call time) bad input.

    Shape:
        input ``(N, C, H, W)``; output the same (contiguous).

    >>> gbn = GhostBatchNorm2d(3, virtual_batch_size=2)
    >>> y = gbn(torch.randn(4, 3, 5, 5))
    >>> bool(y[:2].mean((0, 2, 3)).abs().max() < 1e-5)  # each ghost batch is centred
    True
    """

    _check_input_dim = BatchNorm2d._check_input_dim


class GhostBatchNorm3d(GhostBatchNorm):
    """Ghost batch norm over ``(N, C, D, H, W)`` input. See :class:`GhostBatchNorm2d`.

    >>> GhostBatchNorm3d(2, virtual_batch_size=2)(torch.randn(4, 2, 3, 3, 3)).shape
    torch.Size([4, 2, 3, 3, 3])
    """

    _check_input_dim = BatchNorm3d._check_input_dim


def _ghost(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    cls = (GhostBatchNorm1d, GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d)[spatial_dims]
    return cls(num_features, **kwargs)


register_norm(
    "ghost",
    _ghost,
    "ghost / virtual batch norm (Hoffer et al. 2017); virtual_batch_size= (default 32)",
)
