"""Batch renormalization (Ioffe 2017): batch norm whose training output is corrected toward
the population statistics by clipped, gradient-free factors ``r`` and ``d``.

``BatchRenorm1d/2d/3d`` are batch-norm modules that override only the ``_batch_norm`` hook;
``RenormSchedule`` relaxes the clipping limits over training. Registered as ``"renorm"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from bnlab.norm.ops.core import batch_stats, normalize, unbiased_var, update_running_stats

__all__ = [
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "RenormSchedule",
    "renorm_factors",
]


@dataclass(frozen=True)
class RenormSchedule:
    """Clipping limits ``(r_max, d_max)`` as a function of the training step.

    Steps ``1..warmup_steps`` use ``r_max = 1, d_max = 0`` (plain batch norm, while the
    running statistics settle); the next ``ramp_steps`` move both limits linearly to their
    final values; later steps use the final values. Ioffe 2017, Sec. 4: 5,000 warm-up
    steps, then r_max to 3 and d_max to 5 over tens of thousands of steps.

    Attributes:
        r_max: final bound on ``r = sigma_B / sigma`` (clipped to ``[1/r_max, r_max]``), >= 1.
        d_max: final bound on ``|d| = |mu_B - mu| / sigma``, >= 0.
        warmup_steps: steps of plain batch norm first.
        ramp_steps: steps over which the limits relax linearly (0: jump at once).

    >>> s = RenormSchedule(r_max=3.0, d_max=5.0, warmup_steps=10, ramp_steps=10)
    >>> s.limits(5), s.limits(15), s.limits(100)
    ((1.0, 0.0), (2.0, 2.5), (3.0, 5.0))
    """

    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 0
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.r_max) and self.r_max >= 1.0):
            raise ValueError(f"r_max must be a finite number >= 1; got {self.r_max}")
        if not (math.isfinite(self.d_max) and self.d_max >= 0.0):
            raise ValueError(f"d_max must be a finite number >= 0; got {self.d_max}")
        if self.warmup_steps < 0 or self.ramp_steps < 0:
            raise ValueError(
                f"warmup_steps and ramp_steps must be >= 0; got {self.warmup_steps} and "
                f"{self.ramp_steps}"
            )

    def limits(self, step: int) -> tuple[float, float]:
        """``(r_max, d_max)`` at training step ``step`` (the first step is 1)."""
        if step <= self.warmup_steps:
            return 1.0, 0.0
        if self.ramp_steps == 0:
            return self.r_max, self.d_max
        frac = min(1.0, (step - self.warmup_steps) / self.ramp_steps)
        return 1.0 + frac * (self.r_max - 1.0), frac * self.d_max


def renorm_factors(
    batch_mean: Tensor,
    batch_var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_max: float,
    d_max: float,
) -> tuple[Tensor, Tensor]:
    """The renormalization factors of Ioffe 2017, Alg. 1, as constants (no gradient).

    ``r = clip(sigma_B / sigma, 1/r_max, r_max)`` and ``d = clip((mu_B - mu) / sigma,
    -d_max, d_max)``, with ``sigma_B = sqrt(var_B + eps)`` (biased batch variance) and
    ``sigma = sqrt(running_var + eps)``. bnlab keeps the population VARIANCE (unbiased, as
    torch does) rather than the paper's moving sigma, so checkpoints stay those of batch
    norm; at inference both give ``(x - mu) / sigma``.

    Returns:
        ``(r, d)``, each ``(C,)`` in the wider of the batch and running dtypes, detached.

    >>> r, d = renorm_factors(torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([0.0]),
    ...                       torch.tensor([1.0]), 0.0, 1.5, 0.5)
    >>> r.item(), d.item()
    (1.5, 0.5)
    """
    with torch.no_grad():
        acc = torch.promote_types(batch_mean.dtype, running_mean.dtype)
        sigma = torch.sqrt(running_var.to(acc) + eps)
        sigma_b = torch.sqrt(batch_var.detach().to(acc) + eps)
        r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
        d = ((batch_mean.detach().to(acc) - running_mean.to(acc)) / sigma).clamp(-d_max, d_max)
    return r, d


class BatchRenorm(_BatchNorm):
    """Batch renormalization; training output ``weight * (r * x_hat_B + d) + bias``.

    ``x_hat_B = (x - mu_B) / sigma_B`` is batch norm's normalized value; ``r`` and ``d``
    (:func:`renorm_factors`, no gradient) make the training output depend on the
    population statistics, so training and inference agree even with small or non-i.i.d.
    batches. ``r = 1, d = 0`` is exactly batch norm; at inference the layer IS batch norm
    (running statistics). Implemented on the core as ``normalize`` with the batch
    statistics and the affine ``(weight * r, bias + weight * d)``.

    Extra keyword-only arguments (besides every ``BatchNorm2d`` argument):
        r_max, d_max: clipping limits (final values of the schedule).
        warmup_steps, ramp_steps: see :class:`RenormSchedule`; the step is
            ``num_batches_tracked``.

    Raises:
        ValueError: ``track_running_stats=False`` (renorm needs population statistics),
            or limits out of range.
    Any rank: ``(N, C, *)`` (``BatchRenorm1d/2d/3d`` are the rank-checked drop-ins).

    >>> BatchRenorm(3)(torch.randn(4, 3, 5)).shape
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
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
        ramp_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                "batch renorm corrects batch statistics toward the running ones, so it needs "
                "track_running_stats=True; got False"
            )
        self.schedule = RenormSchedule(r_max, d_max, warmup_steps, ramp_steps)
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs
        )

    def current_limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` for the step counted so far (``num_batches_tracked``)."""
        step = 0 if self.num_batches_tracked is None else int(self.num_batches_tracked)
        return self.schedule.limits(step)

    def _batch_norm(
        self,
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
    ) -> Tensor:
        if not training or running_mean is None or running_var is None:
            return super()._batch_norm(input, running_mean, running_var, training, momentum)
        if input.numel() == 0:  # nothing to correct; batch norm's empty-batch path
            return super()._batch_norm(input, running_mean, running_var, training, momentum)
        mean, var = batch_stats(input)
        r_max, d_max = self.current_limits()
        # r and d from the statistics BEFORE this batch's update (Alg. 1 order).
        r, d = renorm_factors(mean, var, running_mean, running_var, self.eps, r_max, d_max)
        weight = r if self.weight is None else self.weight * r
        shift = d if self.weight is None else self.weight * d
        bias = shift if self.bias is None else self.bias + shift
        y = normalize(input, mean, var, weight, bias, self.eps)
        count = input.numel() // input.shape[1]
        update_running_stats(running_mean, running_var, mean, unbiased_var(var, count), momentum)
        return y

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            f"{super().extra_repr()}, r_max={s.r_max}, d_max={s.d_max}, "
            f"warmup_steps={s.warmup_steps}, ramp_steps={s.ramp_steps}"
        )


class BatchRenorm1d(BatchRenorm):
    """Batch renorm over ``(N, C)`` or ``(N, C, L)`` input. See :class:`BatchRenorm2d`.

    >>> BatchRenorm1d(4, r_max=2.0, d_max=1.0)(torch.randn(8, 4)).shape
    torch.Size([8, 4])
    """

    _check_input_dim = BatchNorm1d._check_input_dim


class BatchRenorm2d(BatchRenorm):
    """Batch renormalization (Ioffe 2017) over ``(N, C, H, W)`` input.

    Training: ``y = weight * (r * (x - mu_B) / sigma_B + d) + bias`` with ``r``, ``d``
    from :func:`renorm_factors` (constants for autograd); the running statistics update
    as in batch norm. Eval: ``y = weight * (x - mu) / sigma + bias``, batch norm's.

    Args:
        num_features, eps, momentum, affine, device, dtype, bias, decay, backend: as
            :class:`bnlab.norm.BatchNorm2d`.
        r_max, d_max, warmup_steps, ramp_steps: keyword-only; see :class:`RenormSchedule`.

    Raises:
        ValueError: ``track_running_stats=False``, bad limits, or (at call time) bad input.

    Shape:
        input ``(N, C, H, W)``; output the same.

    >>> brn = BatchRenorm2d(3, r_max=1.0, d_max=0.0)  # exactly batch norm
    >>> brn(torch.randn(4, 3, 5, 5)).shape
    torch.Size([4, 3, 5, 5])
    """

    _check_input_dim = BatchNorm2d._check_input_dim


class BatchRenorm3d(BatchRenorm):
    """Batch renorm over ``(N, C, D, H, W)`` input. See :class:`BatchRenorm2d`.

    >>> BatchRenorm3d(2)(torch.randn(2, 2, 3, 3, 3)).shape
    torch.Size([2, 2, 3, 3, 3])
    """

    _check_input_dim = BatchNorm3d._check_input_dim


def _renorm(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    cls = (BatchRenorm1d, BatchRenorm1d, BatchRenorm2d, BatchRenorm3d)[spatial_dims]
    return cls(num_features, **kwargs)


register_norm(
    "renorm",
    _renorm,
    "batch renormalization (Ioffe 2017); r_max=, d_max=, warmup_steps=, ramp_steps=",
)
