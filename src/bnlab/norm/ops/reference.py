"""The readable reference: batch norm in plain torch operations with an analytic backward.

This is the "low level" version the seed tutorials build by hand (moments, normalize,
scale and shift, population statistics), following Ioffe & Szegedy 2015, Algorithms 1
and 2. It is the ``"reference"`` backend of ``bnlab.norm.ops.functional.batch_norm``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab.norm.ops import _validation
from bnlab.norm.ops.core import (
    batch_stats,
    channel_shape,
    compute_dtype,
    empty_batch_norm,
    normalize,
    reduce_dims,
    unbiased_var,
    update_running_stats,
)

__all__ = ["BatchNormFunction", "batch_norm_reference"]


class BatchNormFunction(torch.autograd.Function):
    """Normalize with given statistics, scale and shift; backward derived by hand.

    Forward (Ioffe & Szegedy 2015, Alg. 1, lines 3-4), per channel ``c`` (dim 1)::

        invstd = 1 / sqrt(var + eps)
        xhat   = (x - mean) * invstd
        y      = weight * xhat + bias

    ``apply(x, mean, var, weight, bias, eps, batch_statistics)`` returns
    ``(y, xhat, invstd)``. ``xhat`` and ``invstd`` are returned (not only saved) so that
    the backward, written in differentiable torch operations on them, can itself be
    differentiated: ``gradgradcheck`` passes.

    Backward (the chain rule through Alg. 1, as in the paper's Section 3), with ``m``
    values per channel, ``g = dL/dy * weight + dL/dxhat`` and means over the ``m``
    values::

        dL/dbias   = sum(dL/dy)
        dL/dweight = sum(dL/dy * xhat)
        dL/dx      = invstd * (g - mean(g) - xhat * mean(g * xhat))
                     - dL/dinvstd * invstd^2 * xhat / m        (batch statistics)
        dL/dx      = invstd * g                               (population statistics)

    With ``batch_statistics=True`` the caller passes the batch's own mean and biased
    variance (as constants; their dependence on ``x`` is in the formula above). With
    False it passes population statistics, which are constants of the batch.

    Shape:
        x: ``(N, C, *)``; mean, var, weight, bias: ``(C,)``; y, xhat: like x;
        invstd: ``(C,)``. Half inputs compute in float32 (``xhat`` and ``invstd`` are
        float32, ``y`` has x's dtype).

    >>> x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    >>> mean, var = batch_stats(x.detach())
    >>> y, xhat, invstd = BatchNormFunction.apply(x, mean, var, None, None, 1e-5, True)
    >>> y.shape, invstd.shape
    (torch.Size([4, 3]), torch.Size([3]))
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        mean: Tensor,
        var: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        batch_statistics: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        cdt = compute_dtype(x.dtype)
        shape = channel_shape(x.dim(), x.shape[1])
        # Alg. 1 line 3: normalize (the wide mean keeps large offsets exact, see normalize).
        xhat = normalize(x.to(cdt), mean, var, None, None, eps)
        invstd = torch.rsqrt(var.to(torch.promote_types(var.dtype, cdt)) + eps).to(cdt)
        # Alg. 1 line 4: scale and shift.
        y = xhat
        if weight is not None and bias is not None:
            y = torch.addcmul(bias.to(cdt).reshape(shape), xhat, weight.to(cdt).reshape(shape))
        elif weight is not None:
            y = xhat * weight.to(cdt).reshape(shape)
        elif bias is not None:
            y = xhat + bias.to(cdt).reshape(shape)
        ctx.set_materialize_grads(False)  # unused outputs give None, not tensors of zeros
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.batch_statistics = batch_statistics
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.to(x.dtype), xhat, invstd

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor | None, dxhat: Tensor | None, dinvstd: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        shape = channel_shape(xhat.dim(), xhat.shape[1])
        dims = reduce_dims(xhat.dim())
        cdt = xhat.dtype
        if dy is not None:
            dy = dy.to(cdt)

        # Gradients of the affine parameters (Alg. 1 line 4).
        dweight = dbias = None
        if ctx.needs_input_grad[3] and dy is not None:
            dweight = (dy * xhat).sum(dims).to(weight.dtype)
        if ctx.needs_input_grad[4] and dy is not None:
            dbias = dy.sum(dims).to(ctx.bias_dtype)

        dx = None
        if ctx.needs_input_grad[0]:
            # g = dL/dxhat, from y = weight * xhat + bias and from xhat itself.
            g = torch.zeros_like(xhat)
            if dy is not None:
                g = dy * weight.to(cdt).reshape(shape) if weight is not None else dy
            if dxhat is not None:
                g = g + dxhat
            s = invstd.reshape(shape)
            if ctx.batch_statistics:
                # mean and var are functions of x: the two subtracted terms are the paths
                # through d mean/dx and d var/dx (Ioffe & Szegedy 2015, Section 3).
                mean_g = g.mean(dims, keepdim=True)
                mean_gx = (g * xhat).mean(dims, keepdim=True)
                dx = s * (g - mean_g - xhat * mean_gx)
                if dinvstd is not None:
                    m = xhat.numel() // xhat.shape[1]
                    dx = dx - (dinvstd.to(cdt) * invstd * invstd / m).reshape(shape) * xhat
            else:
                dx = s * g
            dx = dx.to(ctx.x_dtype)
        return dx, None, None, dweight, dbias, None, None


def batch_norm_reference(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization step by step; the semantics of ``torch.nn.functional.batch_norm``.

    Training (Alg. 1): the mini-batch mean and biased variance per channel, normalize,
    scale and shift; then (Alg. 2) move the population statistics toward the batch's,
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased variance.
    Inference (Alg. 2, line 11): the same normalization with the population statistics.
    The backward is :class:`BatchNormFunction`'s analytic one.

    Args and Raises: as :func:`bnlab.norm.ops.functional.batch_norm` (without ``backend``).

    >>> x = torch.randn(16, 3)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = batch_norm_reference(x, rm, rv, training=True, momentum=1.0)
    >>> torch.allclose(rm, x.mean(0)) and torch.allclose(rv, x.var(0))
    True
    """
    _validation.check_batch_norm_args(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )
    if input.numel() == 0:
        return empty_batch_norm(input, weight, bias)
    if training:
        # Alg. 1 lines 1-2: mini-batch mean and (biased) variance. Computed without
        # autograd: BatchNormFunction's backward accounts for their dependence on x.
        with torch.no_grad():
            mean, var = batch_stats(input)
        if running_mean is not None and running_var is not None:
            # Alg. 2 line 10: population statistics, with Bessel's correction m/(m-1).
            m = _validation.values_per_channel(input)
            update_running_stats(running_mean, running_var, mean, unbiased_var(var, m), momentum)
    else:
        if running_mean is None or running_var is None:  # checked above; narrows the type
            raise ValueError("eval mode needs running_mean and running_var")
        mean, var = running_mean.detach(), running_var.detach()
    y, _xhat, _invstd = BatchNormFunction.apply(input, mean, var, weight, bias, eps, training)
    return y
