"""The functional front end: :func:`batch_norm` validates its arguments and routes the call
to a backend (``dispatch``). The math itself lives in ``core`` and is re-exported here, so
``bnlab.norm.ops.functional`` stays the one import for both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.norm.ops import _validation, dispatch
from bnlab.norm.ops.core import (
    DEFAULT_MOMENTUM,
    batch_stats,
    channel_shape,
    compute_dtype,
    decay_from_momentum,
    empty_batch_norm,
    momentum_from_decay,
    normalize,
    reduce_dims,
    resolve_momentum,
    stats_dtype,
    unbiased_var,
    update_running_stats,
)

__all__ = [
    "DEFAULT_MOMENTUM",
    "batch_norm",
    "batch_stats",
    "channel_shape",
    "compute_dtype",
    "decay_from_momentum",
    "empty_batch_norm",
    "momentum_from_decay",
    "normalize",
    "reduce_dims",
    "resolve_momentum",
    "stats_dtype",
    "unbiased_var",
    "update_running_stats",
]


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> Tensor:
    """Batch normalization with the semantics of ``torch.nn.functional.batch_norm``.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel (dim 1). With
    ``training=True`` mean/var are the batch's (biased variance) and, when given,
    ``running_mean``/``running_var`` are updated in place with
    ``new = (1 - momentum) * old + momentum * batch`` (unbiased batch variance). With
    ``training=False`` the running statistics are used and left alone.

    Args:
        input: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, any
            memory format; half inputs compute in float32.
        running_mean, running_var: ``(C,)`` buffers, or None (required when not training).
        weight, bias: ``(C,)`` affine parameters, or None for 1 and 0.
        training: use (and update) batch statistics instead of the running ones.
        momentum: weight of the new batch in the running update (PyTorch convention).
        eps: added to the variance before the square root; > 0 in training (as torch
            requires), >= 0 in eval.
        backend: ``"auto"`` or a name from ``dispatch.available_backends()``.

    Returns:
        A tensor like ``input`` (same shape, dtype and memory format).

    Raises:
        TypeError: non-float input, or parameter dtypes that do not match the input.
        ValueError: a bad shape, one value per channel while training, eps <= 0 while
            training, or running statistics missing in eval mode.
        UnknownNameError: an unknown ``backend``.

    An empty input returns an empty output and leaves the running statistics unchanged,
    as PyTorch does. An input that lives in the running buffers' memory (a view of them)
    is normalized as it was before their update, on every backend. Works under
    ``torch.compile``, ``torch.export``, ``torch.jit.trace``,
    ONNX export and ``torch.func`` (see ``bnlab.norm.ops.library``).

    >>> x = torch.randn(8, 3, 4, 4)
    >>> y = batch_norm(x, None, None, training=True)
    >>> bool(y.mean((0, 2, 3)).abs().max() < 1e-5)
    True
    """
    _validation.check_batch_norm_args(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )
    fn = dispatch.backend_for(backend, input, training)
    if input.numel() == 0:
        return empty_batch_norm(input, weight, bias)
    if training and running_mean is not None and _shares_memory(input, running_mean, running_var):
        input = input.clone()  # normalize the batch as given, not as the update leaves it
    return fn(input, running_mean, running_var, weight, bias, training, momentum, eps)


def _shares_memory(input: Tensor, *buffers: Tensor | None) -> bool:
    """Whether ``input`` lives in the storage of one of ``buffers`` (a view of them).

    Eager plain tensors only: traced and transformed tensors (FakeTensor, functional
    tensors, ``torch.func`` wrappers) have no data pointer to compare.
    """
    if type(input) is not Tensor or torch.compiler.is_compiling():
        return False
    try:
        storage = input.untyped_storage().data_ptr()
        return any(b is not None and b.untyped_storage().data_ptr() == storage for b in buffers)
    except (RuntimeError, NotImplementedError):  # torch.func's wrappers hide their storage
        return False
