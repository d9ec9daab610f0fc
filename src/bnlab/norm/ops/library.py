"""bnlab's fused CPU batch norm as real PyTorch operators.

``torch.ops.bnlab.fused_batch_norm`` (forward; updates the running statistics in place) and
``torch.ops.bnlab.fused_batch_norm_backward`` are ``torch.library`` custom ops with

- a fake (meta) implementation, so FakeTensor/meta shape inference, ``torch.compile``
  and ``torch.export`` see one opaque node per batch norm and never trace into numba;
- a registered autograd formula whose backward is itself the registered backward op
  (a double backward recomputes with differentiable torch operations instead).

The kernels run only where an opaque operator can be represented. :func:`opaque_ok` names
the other places (``torch.jit.trace``/legacy ONNX export, ``torch.func`` transforms,
forward-mode AD); there :func:`batch_norm_fused` computes with ATen's ``batch_norm``
instead, so no traced artifact ever bakes a batch into a constant.

Layering: this module sits above the kernels (``kernels.fused``, numba imported on first
use) and the math (``core``), and below ``dispatch``, which routes ``"fused"`` here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from bnlab.norm.ops import _validation
from bnlab.norm.ops.core import batch_stats, empty_batch_norm, normalize
from bnlab.norm.ops.reference import batch_norm_reference

__all__ = [
    "SUPPORTED_DTYPES",
    "batch_norm_fused",
    "fused_batch_norm",
    "is_supported",
    "opaque_ok",
    "warmup",
]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def is_supported(input: Tensor) -> bool:
    """Whether the fused kernels handle ``input``: a non-empty float32/float64 CPU tensor."""
    return input.device.type == "cpu" and input.dtype in SUPPORTED_DTYPES and input.numel() > 0


def _output_format(x: Tensor) -> torch.memory_format:
    """The strides the kernels give ``y``: ``x``'s if channels-last-dense, else contiguous."""
    if not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        return torch.preserve_format
    return torch.contiguous_format


@torch.library.custom_op("bnlab::fused_batch_norm", mutates_args=(), device_types="cpu")
def _fused_forward_op(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, mean, invstd, new_running_mean, new_running_var)`` (``kernels.fused.forward``).

    Functional (an autograd formula needs that): the updated running statistics are
    returned, not written; they are empty unless training with running statistics.
    :func:`batch_norm_fused` copies them into the buffers.
    """
    from bnlab.norm.ops.kernels import fused  # numba: imported on the first fused call

    update = training and running_mean is not None and running_var is not None
    new_mean = running_mean.detach().clone() if update else input.new_empty((0,))  # type: ignore[union-attr]
    new_var = running_var.detach().clone() if update else input.new_empty((0,))  # type: ignore[union-attr]
    y, mean, invstd = fused.forward(
        input,
        weight,
        bias,
        new_mean if update else running_mean,
        new_var if update else running_var,
        training,
        momentum,
        eps,
        relu,
    )
    return y, mean, invstd, new_mean, new_var


@_fused_forward_op.register_fake
def _(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    relu: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    y = torch.empty_like(input, memory_format=_output_format(input))
    stats = input.new_empty((input.shape[1],), dtype=torch.float64)
    if training and running_mean is not None and running_var is not None:
        new_mean, new_var = torch.empty_like(running_mean), torch.empty_like(running_var)
    else:
        new_mean, new_var = input.new_empty((0,)), input.new_empty((0,))
    return y, stats, torch.empty_like(stats), new_mean, new_var


@torch.library.custom_op("bnlab::fused_batch_norm_backward", mutates_args=(), device_types="cpu")
def _fused_backward_op(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    training: bool,
    relu: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_input, grad_weight, grad_bias)``; ``grad_input`` is empty unless ``input_grad``.

    The gradients of weight and bias are returned in the input's dtype.
    """
    return _backward_kernels(
        grad_output, input, weight, bias, mean, invstd, training, relu, input_grad
    )


def _backward_kernels(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    training: bool,
    relu: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward kernel (``kernels.fused.backward``) as the operator returns it: the
    parameter gradients in the input's dtype, ``grad_input`` empty unless ``input_grad``.
    The operator's body, and what the eager path calls directly."""
    from bnlab.norm.ops.kernels import fused

    dx, dw, db = fused.backward(
        grad_output, input, weight, bias, mean, invstd, training, relu, input_grad
    )
    dx = input.new_empty((0,)) if dx is None else dx
    return dx, dw.to(input.dtype), db.to(input.dtype)


@_fused_backward_op.register_fake
def _(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    training: bool,
    relu: bool,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    if input_grad:
        dx = torch.empty_like(input, memory_format=_output_format(input))
    else:
        dx = input.new_empty((0,))
    return dx, input.new_empty((input.shape[1],)), input.new_empty((input.shape[1],))


def _setup_context(ctx: Any, inputs: Sequence, output: Sequence) -> None:
    input, weight, bias, _rm, _rv, training, _momentum, eps, relu = inputs
    _y, mean, invstd, _new_mean, _new_var = output
    ctx.save_for_backward(input, weight, bias, mean, invstd)
    ctx.training, ctx.eps, ctx.relu = training, eps, relu


def _backward(ctx: Any, grad_y: Tensor, *_grad_stats: Tensor) -> tuple[Tensor | None, ...]:
    input, weight, bias, _mean, _invstd = ctx.saved_tensors
    needs = tuple(t is not None and t.requires_grad for t in (input, weight, bias))
    return _gradients(ctx, grad_y, needs, torch.ops.bnlab.fused_batch_norm_backward)


def _gradients(
    ctx: Any, grad_y: Tensor, needs: Sequence[bool], kernel: Any
) -> tuple[Tensor | None, ...]:
    """The nine gradients of a fused forward (input, weight, bias, then None for the
    running statistics and the scalars), from ``ctx``'s saved ``(input, weight, bias, mean,
    invstd)``; ``kernel`` is the backward operator or :func:`_backward_kernels`. Under
    ``create_graph=True`` the backward is recomputed differentiably instead."""
    input, weight, bias, mean, invstd = ctx.saved_tensors
    need_x, need_w, need_b = needs
    if torch.is_grad_enabled():  # create_graph=True: a backward that is itself differentiable
        dx, dw, db = _differentiable_backward(ctx, input, weight, bias, mean, invstd, grad_y)
    else:
        dx, dw, db = kernel(
            grad_y, input, weight, bias, mean, invstd, ctx.training, ctx.relu, need_x
        )
    return (
        dx if need_x else None,
        dw if need_w else None,
        db if need_b else None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


def _differentiable_backward(
    ctx: Any,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    grad_y: Tensor,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The backward in torch operations (``create_graph=True``, ``gradgradcheck``): the
    forward recomputed with bnlab's math and differentiated by autograd."""
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
    if not inputs:
        return None, None, None
    eps: float = ctx.eps
    with torch.enable_grad():
        if ctx.training:
            batch_mean, var = batch_stats(x)
        else:
            batch_mean, var = mean.detach(), invstd.detach().pow(-2) - eps
        y = normalize(x, batch_mean, var, weight, bias, eps)
        if ctx.relu:
            y = torch.relu(y)
        grads = torch.autograd.grad(y, inputs, grad_y, create_graph=True, allow_unused=True)
    found = dict(zip((id(t) for t in inputs), grads, strict=True))
    dx, dw, db = (found.get(id(t)) if t is not None else None for t in (x, weight, bias))
    return dx, dw, db


_fused_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerFusedBatchNorm(torch.autograd.Function):
    """The same kernels and autograd formula as the operator, without the operator.

    ``torch.library``'s Python dispatch, fake-tensor plumbing and generic autograd wrapper
    cost about 0.3-0.8 ms per forward and backward on one thread, more than the kernels
    themselves on a mid-size batch. In plain eager mode nothing needs the operator, so
    :func:`batch_norm_fused` calls the kernels through this Function (the running
    statistics are updated in place, as the operator's caller does after it); the results
    are bitwise those of the operator (tested). Anything that traces or transforms
    (:func:`_eager_ok`) still gets the operator.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        relu: bool,
    ) -> Tensor:
        from bnlab.norm.ops.kernels import fused

        y, mean, invstd = fused.forward(
            input, weight, bias, running_mean, running_var, training, momentum, eps, relu
        )
        ctx.save_for_backward(input, weight, bias, mean, invstd)
        ctx.training, ctx.eps, ctx.relu = training, eps, relu
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        return _gradients(ctx, grad_y, ctx.needs_input_grad[:3], _backward_kernels)


def _eager_ok(*tensors: Tensor | None) -> bool:
    """Whether :class:`_EagerFusedBatchNorm` may stand in for the operator: plain eager
    mode (no compiler, tracer, dispatch mode or torch-function mode active) on plain
    tensors (not a subclass such as FakeTensor); :func:`opaque_ok` must hold as well."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    if torch._C._is_torch_function_mode_enabled():
        return False
    return all(t is None or type(t) in _PLAIN_TENSORS for t in tensors)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def opaque_ok(*tensors: Tensor | None) -> bool:
    """Whether bnlab's opaque operator may run on ``tensors`` here.

    True in eager mode, under ``torch.compile`` and ``torch.export`` (they keep it as one
    node, and run the kernels). False where it cannot be represented: ``torch.jit.trace``
    and the TorchScript-based ONNX exporter (they would record its output as a constant),
    ONNX export in general (``BatchNormalization`` is the portable form), ``torch.func``
    transforms (no batching rule) and forward-mode AD (no forward formula).
    """
    if torch.compiler.is_compiling():
        return not torch.onnx.is_in_onnx_export()
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    if forward_ad._current_level >= 0:
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return not any(t is not None and wrapped(t) for t in tensors)


def batch_norm_fused(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    *,
    relu: bool = False,
) -> Tensor:
    """The ``"fused"`` backend: :func:`fused_batch_norm` without the argument checks.

    Trusts validated arguments and a non-empty input (``bnlab.norm.ops.dispatch``'s backend
    contract). Where the kernels cannot run (see :func:`is_supported`, :func:`opaque_ok`)
    the same result comes from ATen's ``batch_norm`` (unsupported devices and dtypes go to
    bnlab's reference implementation, as before).
    """
    if not is_supported(input):
        y = batch_norm_reference(
            input, running_mean, running_var, weight, bias, training, momentum, eps
        )
    elif not opaque_ok(input, weight, bias, running_mean, running_var):
        y = torch.batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps, False
        )
    elif _eager_ok(input, weight, bias, running_mean, running_var):
        return _EagerFusedBatchNorm.apply(
            input, weight, bias, running_mean, running_var, training, momentum, eps, relu
        )
    else:
        y, _mean, _invstd, new_mean, new_var = torch.ops.bnlab.fused_batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps, relu
        )
        if training and running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.copy_(new_mean)
                running_var.copy_(new_var)
        return y
    return torch.relu(y) if relu else y


def fused_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    relu: bool = False,
) -> Tensor:
    """Batch norm through the fused CPU kernels; ``torch.nn.functional.batch_norm`` semantics.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel (dim 1), followed by
    ``max(y, 0)`` when ``relu`` (one pass instead of two, forward and backward). Training
    uses the batch's mean and biased variance and updates the running statistics in
    place (``new = (1 - momentum) * old + momentum * batch``, unbiased variance); eval
    uses the running statistics. Backward: one fused kernel (``bnlab::fused_batch_norm_backward``).

    Args and Raises: as :func:`bnlab.norm.ops.functional.batch_norm`, plus ``relu``.

    Returns:
        A tensor like ``input`` (same shape, dtype and memory format when it is
        contiguous or channels-last).

    >>> x = torch.randn(16, 4, 8, 8)
    >>> y = fused_batch_norm(x, None, None, training=True, relu=True)
    >>> bool((y >= 0).all())
    True
    """
    _validation.check_batch_norm_args(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )
    if input.numel() == 0:
        y = empty_batch_norm(input, weight, bias)
        return torch.relu(y) if relu else y
    return batch_norm_fused(
        input, running_mean, running_var, weight, bias, training, momentum, eps, relu=relu
    )


def warmup(dtypes: tuple[torch.dtype, ...] = SUPPORTED_DTYPES) -> float:
    """Compile (or load from numba's on-disk cache) every kernel for ``dtypes``; seconds.

    The first call of a kernel in a process costs its compilation (seconds) or, once
    numba's cache holds it (``__pycache__`` beside ``kernels/_numba.py``, or
    ``NUMBA_CACHE_DIR``), the cache load (tens of milliseconds). Call this before timing.
    """
    start = time.perf_counter()
    shapes = [((4, 4, 40), None), ((4, 3, 2), None), ((8, 4, 3, 3), torch.channels_last)]
    for dtype in dtypes:
        for shape, fmt in shapes:
            x = torch.randn(shape, dtype=dtype)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            x.requires_grad_(True)
            w = torch.ones(shape[1], dtype=dtype, requires_grad=True)
            rm, rv = torch.zeros(shape[1], dtype=dtype), torch.ones(shape[1], dtype=dtype)
            for training in (True, False):
                y = fused_batch_norm(x, rm, rv, w, None, training)
                y.sum().backward()
    return time.perf_counter() - start
