"""Batch-norm modules, drop-in for ``torch.nn.BatchNorm1d/2d/3d``.

Modules own the parameters, the population-statistics buffers and the train/eval switch;
the math is in ``functional.py``. Subclasses differ only in ``_check_input_dim``; variants
(sync, renorm, ghost, guards) override the ``_batch_norm`` hook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab.norm import _validation, dispatch, safe
from bnlab.norm.functional import batch_norm, momentum_from_decay

__all__ = ["BATCH_NORM_TYPES", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_DEFAULT_MOMENTUM = 0.1


class _NormBase(nn.Module):
    """Parameters, buffers and bookkeeping shared by every per-channel norm layer.

    The same constructor, attributes, parameters and buffers as ``torch.nn``'s norm
    base, so ``state_dict`` keys (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``) load both ways; ``bias=False`` (keyword-only,
    as in torch 2.13) keeps the learned scale but drops the shift. Keyword-only extras:
    ``decay`` (TF/Keras style, converted once by ``momentum_from_decay``), ``backend``
    (see ``bnlab.norm.dispatch``), and the safe-statistics knobs (``bnlab.norm.safe``):
    ``degenerate`` (``"raise"``, ``"population"`` or ``"skip"`` for a training batch with
    at most one value per channel) and ``guard_nonfinite`` (default True: a NaN/Inf batch
    never enters the running statistics; refusals are counted in ``refused_batches``).
    """

    _version = 2  # state_dict layout version: 2 added num_batches_tracked (as in torch)

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    backend: str
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

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
        bias: bool = True,
        decay: float | None = None,
        backend: str = "auto",
        degenerate: str = "raise",
        guard_nonfinite: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int; got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1; got {num_features}")
        if decay is not None:
            if momentum != _DEFAULT_MOMENTUM:
                raise ValueError(
                    f"give either momentum (PyTorch style, weight of the new batch) or decay "
                    f"(TF/Keras style, weight of the old value), not both; got "
                    f"momentum={momentum} and decay={decay}"
                )
            momentum = momentum_from_decay(decay)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"momentum must be in [0, 1] or None (cumulative average); got {momentum}"
            )
        if backend != dispatch.AUTO:
            dispatch.get_backend(backend)  # an unknown name fails here, not at first call
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.backend = backend
        self.degenerate = safe.check_policy(degenerate)
        self.guard_nonfinite = bool(guard_nonfinite)
        self.layer_name: str | None = None  # set by safe.label_layers, for warnings
        self.refused_batches = 0  # non-finite batches kept out of the running statistics
        self.refused_steps: list[int] = []  # their step numbers (the last 100)
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:  # a learned scale without a shift (e.g. when a bias follows)
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Population statistics back to mean 0, variance 1, and the batch counter to 0."""
        if self.running_mean is not None and self.running_var is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, and the affine parameters to weight 1, bias 0."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        """Raise ValueError if ``input`` has a rank this layer does not accept."""
        raise NotImplementedError

    def _check_input(self, input: Tensor) -> None:
        """Type, rank (``_check_input_dim``) and channel count of ``input``."""
        _validation.check_float_tensor("input", input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            expected = list(input.shape)
            expected[1] = self.num_features
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected input with "
                f"{self.num_features} channels in dim 1, shape {tuple(expected)}; got "
                f"shape {tuple(input.shape)}"
            )

    def extra_repr(self) -> str:
        text = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )
        if self.backend != dispatch.AUTO:
            text += f", backend={self.backend!r}"
        if self.degenerate != "raise":
            text += f", degenerate={self.degenerate!r}"
        if not self.guard_nonfinite:
            text += ", guard_nonfinite=False"
        return text

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
        # Checkpoints from before version 2 have no batch counter; start it at 0.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats:
            state_dict.setdefault(key, torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    """Batch normalization over every dim except dim 1 (channels).

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, per channel. In training mode
    ``E`` and ``Var`` (biased) are the batch's, and the running statistics move toward
    them: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    variance, or the cumulative average ``1 / num_batches_tracked`` when ``momentum`` is
    None. In eval mode the running statistics normalize (batch statistics if the layer
    does not track them).

    Subclasses override ``_check_input_dim`` only; variants override ``_batch_norm``.
    """

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        # Buffers read once from the dict: nn.Module attribute lookups of buffers are slow
        # enough to matter on small layers (this runs on every step of every layer).
        buffers = self._buffers
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        training = self.training
        # Batch statistics in training, and in eval when there is nothing else to use.
        use_batch_stats = training or (running_mean is None and running_var is None)
        # A batch with <= 1 value per channel: the layer's policy, before counting it
        # (so "raise" changes no state; see bnlab.norm.safe).
        if use_batch_stats and safe.is_degenerate(input):
            out = safe.degenerate_forward(self, input)
            if out is not None:
                return out
        momentum = self._step_momentum()
        # Buffers are passed (and so updated) in training only when tracking is on.
        tracking = training and self.track_running_stats
        pass_buffers = not training or self.track_running_stats
        shadow = safe.snapshot_running_stats(self, tracking)
        output = self._batch_norm(
            input,
            running_mean if pass_buffers else None,
            running_var if pass_buffers else None,
            use_batch_stats,
            momentum,
        )
        safe.restore_if_nonfinite(self, shadow)
        return output

    def _step_momentum(self) -> float:
        """Count the batch (training with tracking) and return this step's momentum."""
        momentum = 0.0 if self.momentum is None else self.momentum
        tracked = self._buffers["num_batches_tracked"]
        if self.training and self.track_running_stats and tracked is not None:
            tracked.add_(1)
            if self.momentum is None:  # cumulative moving average of all batches so far
                momentum = 1.0 / float(tracked)
        return momentum

    def _batch_norm(
        self,
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
    ) -> Tensor:
        """The normalization itself; the hook variants override (sync, ghost, renorm)."""
        return batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            training,
            momentum,
            self.eps,
            backend=self.backend,
        )


def _rank_error(layer: str, accepted: str, input: Tensor) -> ValueError:
    return ValueError(
        f"{layer} expects {accepted} input; got {input.dim()}-D input of shape {tuple(input.shape)}"
    )


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input; drop-in for ``torch.nn.BatchNorm1d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, statistics over
    N (and L). See :class:`BatchNorm2d` for the arguments.

    Shape:
        input ``(N, C)`` or ``(N, C, L)``; output the same.

    >>> bn = BatchNorm1d(4)
    >>> bn(torch.randn(8, 4)).shape
    torch.Size([8, 4])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise _rank_error("BatchNorm1d", "2-D (N, C) or 3-D (N, C, L)", input)


class BatchNorm2d(_BatchNorm):
    """Batch norm over ``(N, C, H, W)`` input; drop-in for ``torch.nn.BatchNorm2d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, with E and Var
    over N, H, W (Ioffe & Szegedy 2015, Alg. 1; Section 3.2 for convolutions).

    Args:
        num_features: C, the number of channels.
        eps: added to the variance before the square root (default 1e-5).
        momentum: weight of the new batch in the running-statistics update (default 0.1);
            None for a cumulative average over all batches.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: keep ``running_mean``/``running_var``/``num_batches_tracked``
            buffers and use them in eval mode.
        device, dtype: where and in what dtype parameters and buffers live.
        bias: keyword-only; with ``affine``, False learns ``weight`` but no ``bias``.
        decay: keyword-only, TF/Keras style (weight of the OLD value, e.g. 0.99); sets
            ``momentum = 1 - decay``. Not together with a non-default ``momentum``.
        backend: keyword-only, ``"auto"`` or a name from
            ``bnlab.norm.dispatch.available_backends()``.

    Raises:
        ValueError: at call time, for a wrong rank or channel count (the message names
            the expected and received shapes) or one value per channel while training.
        UnknownNameError: an unknown ``backend``.

    Shape:
        input ``(N, C, H, W)``, any memory format; output the same shape and format.

    >>> bn = BatchNorm2d(3, eps=1e-3, decay=0.99)
    >>> bn.momentum
    0.010000000000000009
    >>> bn(torch.randn(4, 3, 5, 5)).shape
    torch.Size([4, 3, 5, 5])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise _rank_error("BatchNorm2d", "4-D (N, C, H, W)", input)


class BatchNorm3d(_BatchNorm):
    """Batch norm over ``(N, C, D, H, W)`` input; drop-in for ``torch.nn.BatchNorm3d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, statistics over
    N, D, H, W. See :class:`BatchNorm2d` for the arguments.

    Shape:
        input ``(N, C, D, H, W)``, any memory format; output the same.

    >>> bn = BatchNorm3d(2)
    >>> bn(torch.randn(2, 2, 3, 4, 5)).shape
    torch.Size([2, 2, 3, 4, 5])
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise _rank_error("BatchNorm3d", "5-D (N, C, D, H, W)", input)


# Every class that is batch norm in the torch.nn sense, for converters (freeze, fold,
# sync) that must recognise both bnlab's and torch's layers.
BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (
    _BatchNorm,
    nn.modules.batchnorm._BatchNorm,
)
