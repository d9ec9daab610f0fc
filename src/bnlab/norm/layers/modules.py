"""Batch-norm modules, drop-in for ``torch.nn.BatchNorm1d/2d/3d`` (and subclasses of them).

torch's base owns the parameters, the population-statistics buffers, ``state_dict`` and
the train/eval switch; bnlab's ``forward`` routes the math through ``functional`` (and so
the fused kernels) and adds the safe-statistics policies. Subclasses differ only in
``_check_input_dim``; variants (sync, renorm, ghost) override ``_batch_norm``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import Proxy

from bnlab.norm.layers import safe
from bnlab.norm.ops import _validation, dispatch
from bnlab.norm.ops.functional import batch_norm, resolve_momentum

__all__ = ["BATCH_NORM_TYPES", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization over every dim except dim 1 (channels).

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias``, per channel. In training mode
    ``E`` and ``Var`` (biased) are the batch's, and the running statistics move toward
    them: ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    variance, or the cumulative average ``1 / num_batches_tracked`` when ``momentum`` is
    None. In eval mode the running statistics normalize (batch statistics if the layer
    does not track them).

    A subclass of ``torch.nn``'s batch-norm base (each public layer of its
    ``torch.nn.BatchNormXd``), so constructor, attributes, ``state_dict`` keys (both ways,
    strict) and repr are torch's, and every ``isinstance``-based tool treats it as batch
    norm. Keyword-only extras: ``decay`` (TF/Keras style, converted by
    ``core.resolve_momentum``), ``backend`` (see ``bnlab.norm.ops.dispatch``), and the
    safe-statistics knobs (``bnlab.norm.layers.safe``): ``degenerate`` (``"raise"``,
    ``"population"`` or ``"skip"`` for a training batch with at most one value per
    channel) and ``guard_nonfinite`` (default True: a NaN/Inf batch never enters the
    running statistics; refusals are counted in the tensor attribute ``refused_count``,
    read as ``refused_batches``).

    Under ``torch.fx.symbolic_trace`` the layer stays one ``call_module`` node (a leaf,
    as torch's layers are); ``torch.jit.script`` scripts the equivalent ``torch.nn``
    layer sharing this one's parameters and buffers (:meth:`__prepare_scriptable__`).
    Subclasses override ``_check_input_dim`` only; variants override ``_batch_norm``.
    """

    #: The torch.nn layer with the same semantics (what ``torch.jit.script`` compiles).
    _torch_class: type[nn.modules.batchnorm._BatchNorm] = nn.modules.batchnorm._BatchNorm

    backend: str
    refused_count: Tensor

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
        num_features = _validation.check_num_features(num_features)
        momentum = resolve_momentum(momentum, decay)
        _validation.check_eps(eps)
        if backend != dispatch.AUTO:
            dispatch.get_backend(backend)  # an unknown name fails here, not at first call
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            device=device,
            dtype=dtype,
            bias=bias,
        )
        self.backend = backend
        self.degenerate = safe.check_policy(degenerate)
        self.guard_nonfinite = bool(guard_nonfinite)
        self.layer_name: str | None = None  # set by safe.label_layers, for warnings
        self.refused_steps: list[int] = []  # steps of refused batches (eager mode, last 100)
        # A tensor, not a buffer (so buffers and state_dict stay torch's): the device-side
        # guard counts into it without a host sync.
        self.refused_count = torch.zeros((), dtype=torch.long, device=device)

    @property
    def refused_batches(self) -> int:
        """Non-finite batches kept out of the running statistics so far (reads the buffer)."""
        return int(self.refused_count)

    def _check_input(self, input: Tensor) -> None:
        """Type, rank (``_check_input_dim``) and channel count of ``input``."""
        _validation.check_float_tensor("input", input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            _validation.check_channels(type(self).__name__, self.num_features, input)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.backend != dispatch.AUTO:
            text += f", backend={self.backend!r}"
        if self.degenerate != "raise":
            text += f", degenerate={self.degenerate!r}"
        if not self.guard_nonfinite:
            text += ", guard_nonfinite=False"
        return text

    def train(self, mode: bool = True) -> _BatchNorm:
        """Switch mode; going to eval warns once about batches refused since the last warning
        (refusals under ``torch.compile``/``export`` are counted on the device, not warned)."""
        if not mode:
            safe.warn_refusals(self)
        return super().train(mode)

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, Proxy):  # symbolic tracing: one call_module node
            return _fx_leaf(self, input)
        self._check_input(input)
        # Buffers read once from the dict: nn.Module attribute lookups of buffers are slow
        # enough to matter on small layers (this runs on every step of every layer).
        buffers = self._buffers
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        training = self.training
        # Batch statistics in training, and in eval when there is nothing else to use.
        use_batch_stats = training or (running_mean is None and running_var is None)
        # A batch with <= 1 value per channel: the layer's policy, before counting it
        # (so "raise" changes no state; see bnlab.norm.layers.safe).
        if use_batch_stats and safe.is_degenerate(input):
            out = safe.degenerate_forward(self, input)
            if out is not None:
                return out
        momentum = self._step_momentum()
        # Buffers are passed (and so updated) in training only when tracking is on.
        tracking = training and self.track_running_stats
        pass_buffers = not training or self.track_running_stats
        if not pass_buffers:
            running_mean = running_var = None
        guard, running_mean, running_var = safe.guard_for(
            self, input, tracking, running_mean, running_var
        )
        output = self._batch_norm(input, running_mean, running_var, use_batch_stats, momentum)
        safe.finish_guard(self, guard)
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

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: the ``torch.nn`` layer of the same semantics,
        sharing this layer's parameters and buffers (so a scripted model trains them).

        Raises:
            TypeError: a variant whose normalization differs from batch norm's.
        """
        if type(self)._batch_norm is not _BatchNorm._batch_norm:
            raise TypeError(
                f"{type(self).__name__} has no TorchScript form (its normalization is not "
                "torch's batch norm); use torch.export or torch.compile instead of "
                "torch.jit.script"
            )
        return as_torch_batch_norm(self, self._torch_class)


def as_torch_batch_norm(
    layer: nn.modules.batchnorm._BatchNorm,
    cls: type[nn.modules.batchnorm._BatchNorm],
    **kwargs: Any,
) -> nn.modules.batchnorm._BatchNorm:
    """A ``cls`` layer (torch's or bnlab's) holding ``layer``'s configuration, mode, and its
    very Parameter and buffer objects (not copies: training either one moves both).

    ``kwargs`` go to ``cls`` (bnlab's keyword-only extras, e.g. ``backend=``).
    """
    twin = cls(
        layer.num_features,
        layer.eps,
        layer.momentum,
        layer.affine,
        layer.track_running_stats,
        device="meta",
        bias=layer.bias is not None or not layer.affine,
        **kwargs,
    )
    for name in ("weight", "bias"):
        twin._parameters[name] = layer._parameters[name]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        twin._buffers[name] = layer._buffers[name]
    if isinstance(twin, _BatchNorm):  # its refusal count lives where the layer does
        reference = layer.weight if layer.weight is not None else layer.running_mean
        device = reference.device if reference is not None else None
        twin.refused_count = torch.zeros((), dtype=torch.long, device=device)
    return twin.train(layer.training)


def _fx_leaf(layer: nn.Module, input: Proxy) -> Proxy:
    """Record ``layer(input)`` as one ``call_module`` node, as FX does for torch's layers.

    The traced ``GraphModule`` then calls this very layer (its kernels, its guard), and FX
    passes that match ``isinstance(module, nn.BatchNorm2d)`` on call_module nodes see it.

    Raises:
        TypeError: the layer is the root of the trace (there is no node to call).
    """
    tracer = input.tracer
    path = tracer.path_of_module(layer)  # type: ignore[attr-defined]
    if not path:
        raise TypeError(
            f"torch.fx cannot trace a {type(layer).__name__} on its own (its forward "
            "branches on the input's shape, as torch's batch norm does); trace the model "
            "that contains it"
        )
    return tracer.create_proxy("call_module", path, (input,), {})


def check_any_rank(layer: str, input: Tensor) -> None:
    """The rank check of the layers that accept any ``(N, C, *)`` input (sync, ghost, renorm)."""
    if input.dim() < 2:
        raise ValueError(
            f"{layer} expects input of at least 2 dims (N, C, *); got {input.dim()}-D input "
            f"of shape {tuple(input.shape)}"
        )


def _rank_error(layer: str, accepted: str, input: Tensor) -> ValueError:
    return ValueError(
        f"{layer} expects {accepted} input; got {input.dim()}-D input of shape {tuple(input.shape)}"
    )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` input; drop-in for ``torch.nn.BatchNorm1d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, statistics over
    N (and L). See :class:`BatchNorm2d` for the arguments.

    Shape:
        input ``(N, C)`` or ``(N, C, L)``; output the same.

    >>> bn = BatchNorm1d(4)
    >>> bn(torch.randn(8, 4)).shape
    torch.Size([8, 4])
    """

    _torch_class = nn.BatchNorm1d

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise _rank_error("BatchNorm1d", "2-D (N, C) or 3-D (N, C, L)", input)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
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
            ``bnlab.norm.ops.dispatch.available_backends()``.

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

    _torch_class = nn.BatchNorm2d

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise _rank_error("BatchNorm2d", "4-D (N, C, H, W)", input)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch norm over ``(N, C, D, H, W)`` input; drop-in for ``torch.nn.BatchNorm3d``.

    ``y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias`` per channel, statistics over
    N, D, H, W. See :class:`BatchNorm2d` for the arguments.

    Shape:
        input ``(N, C, D, H, W)``, any memory format; output the same.

    >>> bn = BatchNorm3d(2)
    >>> bn(torch.randn(2, 2, 3, 4, 5)).shape
    torch.Size([2, 2, 3, 4, 5])
    """

    _torch_class = nn.BatchNorm3d

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise _rank_error("BatchNorm3d", "5-D (N, C, D, H, W)", input)


# Every class that is batch norm in the torch.nn sense (bnlab's layers are subclasses),
# for converters (freeze, fold, sync) that must recognise both bnlab's and torch's layers.
BATCH_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)
