"""Batch-normalization math as small pure functions: batch statistics, normalization,
the running-statistics update and the momentum/decay conversion.

The bottom of ``bnlab.norm``: it imports nothing of bnlab's but argument validation, and
the backends (reference, fused kernels), the ``batch_norm`` front end (``functional``),
modules and variants all build on it; none of them re-derives the formulas.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab.norm.ops import _validation

__all__ = [
    "batch_stats",
    "channel_shape",
    "compute_dtype",
    "decay_from_momentum",
    "empty_batch_norm",
    "merge_moments",
    "momentum_from_decay",
    "normalize",
    "reduce_dims",
    "resolve_momentum",
    "stats_dtype",
    "unbiased_var",
    "update_running_stats",
]


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`batch_stats` returns for an input of ``dtype``: one step wider.

    float16/bfloat16 -> float32, float32 -> float64, float64 -> float64. A float32 mean
    is not enough for a float32 batch: rounding the mean to float32 moves it by up to
    half an ulp of its magnitude, which at mean 1e4 and std 1e-2 is 5% of a standard
    deviation (measured: ``torch.nn.functional.batch_norm`` is off by 0.05 there).

    >>> stats_dtype(torch.float16), stats_dtype(torch.float32)
    (torch.float32, torch.float64)
    """
    if dtype == torch.float64:
        return torch.float64
    if dtype == torch.float32:
        return torch.float64
    if dtype in _validation.REDUCED_PRECISION:
        return torch.float32
    raise TypeError(f"batch statistics need a floating-point input; got dtype {dtype}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype element-wise normalization runs in: float32 for half inputs, else ``dtype``."""
    return torch.float32 if dtype in _validation.REDUCED_PRECISION else dtype


def reduce_dims(ndim: int, channel_dim: int = 1) -> tuple[int, ...]:
    """Every dimension of an ``ndim``-dimensional tensor except ``channel_dim``.

    >>> reduce_dims(4), reduce_dims(4, channel_dim=-1)
    ((0, 2, 3), (0, 1, 2))
    """
    c = _validation.normalize_dim(channel_dim, ndim)
    return tuple(d for d in range(ndim) if d != c)


def channel_shape(ndim: int, num_channels: int, channel_dim: int = 1) -> list[int]:
    """The shape that broadcasts a per-channel vector against an ``ndim`` input.

    >>> channel_shape(4, 3)
    [1, 3, 1, 1]
    """
    shape = [1] * ndim
    shape[_validation.normalize_dim(channel_dim, ndim)] = num_channels
    return shape


def batch_stats(x: Tensor, channel_dim: int = 1) -> tuple[Tensor, Tensor]:
    """Per-channel mean and BIASED variance of ``x`` over every dim except ``channel_dim``.

    ``mean_c = (1/m) sum_i x_ic`` and ``var_c = (1/m) sum_i (x_ic - mean_c)^2`` with ``m``
    values per channel (Ioffe & Szegedy 2015, Alg. 1, lines 1-2). The biased variance is
    the one that normalizes; :func:`unbiased_var` gives the one the population estimate
    uses. Differentiable by autograd.

    Numerics: the moments are taken of ``x - s``, where ``s`` is one sample of each channel
    (the "shifted data" algorithm), so a large common offset cancels exactly before any
    sum is formed; then ``mean = s + mean(x - s)`` is formed in :func:`stats_dtype`, one
    step wider than the input. A float32 batch with mean 1e4 and std 1e-2 keeps its
    normalized error near 1e-7.

    Args:
        x: a floating-point tensor with at least 2 dims.
        channel_dim: the dimension that holds the channels (1 for NC..., -1 for N...C).

    Returns:
        ``(mean, var)``, each of shape ``(C,)`` and dtype ``stats_dtype(x.dtype)``. An
        input with no values per channel gives NaN, as the mean of nothing is undefined.

    Raises:
        TypeError: ``x`` is not floating point.
        ValueError: ``x`` has fewer than 2 dims.

    >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    >>> batch_stats(x)
    (tensor([ 2., 20.], dtype=torch.float64), tensor([  1., 100.], dtype=torch.float64))
    """
    _validation.check_float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(
            f"batch_stats expects a tensor with a batch and a channel dim (at least 2-D); "
            f"got shape {tuple(x.shape)}"
        )
    dims = reduce_dims(x.dim(), channel_dim)
    xc = x.to(compute_dtype(x.dtype))
    if xc.numel() > 0:
        # One sample per channel: index 0 along every reduced dim (a view, no copy).
        shift = xc
        for dim in dims:
            shift = shift.narrow(dim, 0, 1)
        shift = shift.detach()  # a constant: d mean / d x flows through mean(x - s) only
    else:
        shift = xc.new_zeros(channel_shape(x.dim(), x.shape[channel_dim], channel_dim))
    shifted = xc - shift
    # Two passes (mean, then the mean squared deviation) rather than E[d^2] - E[d]^2:
    # no cancellation; also faster than torch.var_mean on the CPU (docs/norm.md).
    mean_shifted = shifted.mean(dims, keepdim=True)
    deviation = shifted - mean_shifted
    var = (deviation * deviation).mean(dims)
    acc = stats_dtype(x.dtype)
    mean = shift.reshape(-1).to(acc) + mean_shifted.reshape(-1).to(acc)
    return mean, var.to(acc)


def unbiased_var(var: Tensor, count: int) -> Tensor:
    """Bessel's correction: ``var * count / (count - 1)`` for ``count`` values per channel.

    The population variance is estimated without bias (Ioffe & Szegedy 2015, Alg. 2,
    line 10: ``Var[x] = m/(m-1) E_B[sigma_B^2]``), as PyTorch's running_var is.

    Raises:
        ValueError: ``count < 2`` (the variance of one value is undefined).
    """
    if count < 2:
        raise ValueError(f"the unbiased variance needs at least 2 values per channel; got {count}")
    return var * (count / (count - 1))


def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    channel_dim: int = 1,
) -> Tensor:
    """Normalize, then scale and shift: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    Ioffe & Szegedy 2015, Alg. 1, lines 3-4, per channel. ``weight``/``bias`` of None
    mean 1 and 0. Runs in float32 for half inputs (returned in the input's dtype) and
    keeps the input's memory format. A ``mean`` wider than the input (as
    :func:`batch_stats` returns) is split into ``hi + lo`` in the input's precision, so
    ``x - hi`` cancels exactly and ``lo`` adds the digits the input dtype cannot hold.
    Differentiable by autograd in every argument.

    Shape:
        x: ``(N, C, ...)`` (channels at ``channel_dim``); mean, var, weight, bias: ``(C,)``;
        output: like ``x``.

    >>> x = torch.tensor([[1.0], [3.0]])
    >>> normalize(x, torch.tensor([2.0]), torch.tensor([1.0]), None, torch.tensor([5.0]), 0.0)
    tensor([[4.],
            [6.]])
    """
    _validation.check_float_tensor("x", x)
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0; got {eps}")
    shape = channel_shape(x.dim(), x.shape[channel_dim], channel_dim)
    cdt = compute_dtype(x.dtype)
    sdt = torch.promote_types(torch.promote_types(mean.dtype, var.dtype), cdt)
    # Per-channel coefficients, formed in the wider of the two precisions.
    scale = torch.rsqrt(var.to(sdt) + eps)
    if weight is not None:
        scale = scale * weight.to(sdt)
    mean_hi = mean.to(cdt)
    mean_lo = mean.to(sdt) - mean_hi.to(sdt)  # exactly 0 when mean is no wider than x
    offset = -mean_lo * scale
    if bias is not None:
        offset = offset + bias.to(sdt)
    centered = x.to(cdt) - mean_hi.reshape(shape)
    # offset + centered * scale in one pass (addcmul); keeps x's memory format.
    y = torch.addcmul(offset.to(cdt).reshape(shape), centered, scale.to(cdt).reshape(shape))
    return y.to(x.dtype)


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    batch_mean: Tensor,
    batch_var_unbiased: Tensor,
    momentum: float,
) -> None:
    """Move the population statistics toward the batch's, in place and without grad.

    ``new = (1 - momentum) * old + momentum * batch`` (PyTorch's convention: momentum is
    the weight of the NEW batch; a TF/Keras ``decay`` is the weight of the OLD value, see
    :func:`momentum_from_decay`). ``running_var`` tracks the UNBIASED batch variance
    (:func:`unbiased_var`). Either buffer may be None (it is then skipped). The update is
    formed in the wider of the buffer and batch dtypes, then stored in the buffer's.

    Raises:
        ValueError: ``momentum`` is not in [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
    with torch.no_grad():
        for running, batch in ((running_mean, batch_mean), (running_var, batch_var_unbiased)):
            if running is None:
                continue
            acc = torch.promote_types(running.dtype, batch.dtype)
            new = running.to(acc) * (1.0 - momentum) + batch.detach().to(acc) * momentum
            running.copy_(new)


def momentum_from_decay(decay: float) -> float:
    """PyTorch momentum for a TensorFlow/Keras/Flax ``decay``: ``momentum = 1 - decay``.

    TF updates ``moving = decay * moving + (1 - decay) * batch`` (decay weighs the OLD
    value, default 0.99); PyTorch updates ``running = (1 - momentum) * running + momentum
    * batch`` (momentum weighs the NEW batch, default 0.1). So TF's 0.99 is PyTorch's
    0.01, and PyTorch's default 0.1 is a TF decay of 0.9. This is the only place bnlab
    converts between the two.

    Raises:
        ValueError: ``decay`` is not in [0, 1].

    >>> round(momentum_from_decay(0.99), 12)
    0.01
    """
    if not isinstance(decay, (int, float)) or isinstance(decay, bool):
        raise TypeError(f"decay must be a float in [0, 1]; got {type(decay).__name__}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1] (TF/Keras style, e.g. 0.99); got {decay}")
    return 1.0 - float(decay)


def decay_from_momentum(momentum: float) -> float:
    """TensorFlow/Keras ``decay`` for a PyTorch ``momentum``: ``decay = 1 - momentum``.

    The inverse of :func:`momentum_from_decay`. ``momentum=None`` (PyTorch's cumulative
    average) has no fixed decay and is refused.

    Raises:
        TypeError: ``momentum`` is None or not a number.
        ValueError: ``momentum`` is not in [0, 1].

    >>> decay_from_momentum(0.1)
    0.9
    """
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        raise TypeError(
            f"momentum must be a float in [0, 1] (momentum=None, the cumulative average, has "
            f"no fixed decay); got {type(momentum).__name__}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (PyTorch style, e.g. 0.1); got {momentum}")
    return 1.0 - float(momentum)


def empty_batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An empty input: an empty output still connected to weight and bias (zero grads).

    PyTorch returns an empty tensor, does not touch the running statistics, and gives
    weight/bias zero gradients; every backend behaves the same because this runs first.
    """
    shape = channel_shape(input.dim(), input.shape[1])
    y = input.to(compute_dtype(input.dtype))
    if weight is not None:
        y = y * weight.to(y.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(y.dtype).reshape(shape)
    return y.to(input.dtype)


#: PyTorch's default momentum (weight of the new batch); TF/Keras's decay 0.9 is the same.
DEFAULT_MOMENTUM = 0.1


def resolve_momentum(momentum: float | None, decay: float | None) -> float | None:
    """The one rule for a layer given ``momentum`` (PyTorch style) and/or ``decay`` (TF style).

    ``decay`` None: ``momentum`` as given (None is PyTorch's cumulative average).
    ``decay`` given: ``momentum_from_decay(decay)``, and ``momentum`` must be left at its
    default (or None): giving both is ambiguous and refused.

    Raises:
        ValueError: both given, or either outside [0, 1].

    >>> resolve_momentum(0.1, None), round(resolve_momentum(0.1, 0.99), 12)
    (0.1, 0.01)
    """
    if decay is not None:
        if momentum is not None and momentum != DEFAULT_MOMENTUM:
            raise ValueError(
                f"give either momentum (PyTorch style, weight of the new batch) or decay "
                f"(TF/Keras style, weight of the old value), not both; got "
                f"momentum={momentum} and decay={decay}"
            )
        return momentum_from_decay(decay)
    if momentum is not None and (
        isinstance(momentum, bool) or not isinstance(momentum, (int, float))
    ):
        raise TypeError(f"momentum must be a float in [0, 1] or None; got {momentum!r}")
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] or None (cumulative average); got {momentum}")
    return momentum


def merge_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-part (count, mean, M2) into the moments of the union, exactly.

    The k-way form of Chan, Golub & LeVeque's parallel update (1979): with ``n = Σ n_i``,
    ``mean = Σ n_i mean_i / n`` and ``M2 = Σ M2_i + Σ n_i (mean_i - mean)²``, where
    ``M2 = Σ (x - mean)²`` is the sum of squared deviations (so the biased variance is
    ``M2 / n``). Unlike summing Σx and Σx² it does not cancel catastrophically when
    ``|mean| >> std``. Parts with ``n_i = 0`` contribute nothing (their mean is ignored).

    Args:
        counts: ``(k,)`` element counts per part (may differ; zeros allowed).
        means: ``(k, C)`` per-part means.
        m2s: ``(k, C)`` per-part sums of squared deviations from the part's mean.

    Returns:
        ``(n, mean, m2)``: the total count (0-D), and ``(C,)`` mean and M2 of the union
        (zeros where ``n == 0``).

    Raises:
        ValueError: shapes that do not line up.

    >>> n, mean, m2 = merge_moments(
    ...     torch.tensor([2.0, 1.0]), torch.tensor([[1.0], [4.0]]), torch.tensor([[2.0], [0.0]])
    ... )
    >>> n.item(), mean.tolist(), m2.tolist()  # data 0, 2 | 4
    (3.0, [2.0], [8.0])
    """
    if counts.dim() != 1 or means.dim() != 2 or means.shape != m2s.shape:
        raise ValueError(
            "expected counts (k,), means (k, C) and m2s (k, C); got "
            f"{tuple(counts.shape)}, {tuple(means.shape)}, {tuple(m2s.shape)}"
        )
    if means.shape[0] != counts.shape[0]:
        raise ValueError(f"got {counts.shape[0]} counts for {means.shape[0]} parts")
    n = counts.sum()
    w = counts.unsqueeze(1)
    mean = (w * means).sum(0) / n.clamp(min=1)
    m2 = m2s.sum(0) + (w * (means - mean) ** 2).sum(0)
    return n, mean, m2
