"""Recurrent batch normalization (Cooijmans et al. 2016): batch norm inside a recurrence,
with separate population statistics for every time step and shared scale and shift.

``RecurrentBatchNorm`` keeps ``(max_steps, C)`` running buffers; ``forward(x, step)``
normalizes with (and updates) row ``min(step, max_steps - 1)``. Registered as ``"recurrent"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm.layers.registry import register_norm
from bnlab.norm.ops import _validation, dispatch
from bnlab.norm.ops.functional import batch_norm, resolve_momentum

__all__ = ["RecurrentBatchNorm"]


class RecurrentBatchNorm(nn.modules.batchnorm._NormBase):
    """Batch norm for step ``t`` of a recurrent network, one set of statistics per step.

    ``y_t = (x_t - E_t[x]) / sqrt(Var_t[x] + eps) * weight + bias``. Training uses the
    batch statistics of ``x_t`` and moves row ``t`` of the running buffers toward them
    (Cooijmans et al. 2016, Sec. 3: "separate statistics for each timestep"); eval
    normalizes with row ``t``. Steps at or beyond ``max_steps`` share the last row
    (the paper's ``T_max`` rule, which lets a model run on longer sequences than it saw).
    ``weight`` and ``bias`` are shared by all steps. The paper initializes ``weight`` to
    0.1 for LSTM gates; pass ``weight_init=0.1`` for that.

    Args:
        num_features: C.
        max_steps: T_max, the number of steps with their own statistics.
        eps, momentum, affine, track_running_stats, device, dtype, bias, decay, backend:
            as :class:`bnlab.norm.BatchNorm1d`; momentum and the cumulative average
            (momentum=None) apply per step (``num_batches_tracked[t]``).
        weight_init: initial value of ``weight`` (default 1).

    Buffers:
        ``running_mean`` and ``running_var`` of shape ``(max_steps, C)``,
        ``num_batches_tracked`` of shape ``(max_steps,)``.

    Raises:
        ValueError: ``max_steps < 1``, a negative ``step``, or bad input.

    Shape:
        input ``(N, C)`` or ``(N, C, *)`` for one step; output the same.

    >>> rbn = RecurrentBatchNorm(4, max_steps=3)
    >>> h = torch.randn(8, 4)
    >>> [rbn(h * (t + 1), t).shape[0] for t in range(5)]
    [8, 8, 8, 8, 8]
    >>> rbn.num_batches_tracked.tolist()  # steps 3 and 4 used the last row
    [1, 1, 3]
    """

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_init: float = 1.0,
        bias: bool = True,
        decay: float | None = None,
        backend: str = "auto",
    ) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1; got {max_steps!r}")
        num_features = _validation.check_num_features(num_features)
        momentum = resolve_momentum(momentum, decay)
        _validation.check_eps(eps)
        if backend != dispatch.AUTO:
            dispatch.get_backend(backend)  # an unknown name fails here, not at first call
        self.max_steps = max_steps
        self.weight_init = weight_init
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.backend = backend
        if track_running_stats:
            # One row per step (replaces the (C,) buffers the base registered).
            factory: dict[str, Any] = {"device": device, "dtype": dtype}
            self.running_mean = torch.zeros(max_steps, num_features, **factory)
            self.running_var = torch.ones(max_steps, num_features, **factory)
            self.num_batches_tracked = torch.zeros(max_steps, dtype=torch.long, device=device)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; ``weight`` to ``weight_init``, ``bias`` to 0."""
        super().reset_parameters()
        if self.weight is not None:
            nn.init.constant_(self.weight, getattr(self, "weight_init", 1.0))

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"RecurrentBatchNorm expects (N, C) or (N, C, *) input for one step; got "
                f"{input.dim()}-D input of shape {tuple(input.shape)}"
            )

    def _check_input(self, input: Tensor) -> None:
        _validation.check_float_tensor("input", input)
        self._check_input_dim(input)
        _validation.check_channels(type(self).__name__, self.num_features, input)

    def row(self, step: int) -> int:
        """The statistics row step ``step`` uses: ``min(step, max_steps - 1)``."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        return min(step, self.max_steps - 1)

    def forward(self, input: Tensor, step: int) -> Tensor:
        self._check_input(input)
        t = self.row(step)
        tracking = self.track_running_stats and self.running_mean is not None
        use_batch_stats = self.training or not tracking
        if use_batch_stats:  # refuse before counting: bad input changes no state
            _validation.check_one_value_per_channel(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        running_mean = running_var = None
        if tracking and self.running_mean is not None and self.running_var is not None:
            running_mean, running_var = self.running_mean[t], self.running_var[t]
            if self.training and self.num_batches_tracked is not None:
                self.num_batches_tracked[t] += 1
                if self.momentum is None:  # cumulative average of this step's batches
                    momentum = 1.0 / float(self.num_batches_tracked[t])
        # Rows of a contiguous (T, C) buffer are contiguous views: updated in place.
        return batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_steps={self.max_steps}"


def _recurrent(num_features: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    del spatial_dims  # rank-agnostic; forward takes (input, step)
    if "max_steps" not in kwargs:
        raise ValueError(
            "the 'recurrent' norm needs max_steps= (time steps with their own statistics)"
        )
    return RecurrentBatchNorm(num_features, **kwargs)


register_norm(
    "recurrent",
    _recurrent,
    "recurrent batch norm (Cooijmans et al. 2016), statistics per time step; "
    "max_steps= required, forward(x, step)",
)
