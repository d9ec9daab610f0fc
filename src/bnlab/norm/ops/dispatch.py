"""The backend table behind :func:`bnlab.norm.ops.functional.batch_norm`.

A backend is a function with ``batch_norm``'s signature (no ``backend`` keyword) that
trusts its arguments (``batch_norm`` validated them). ``"auto"`` is resolved by
:func:`_auto_rule`, the one place that decides which backend is fastest and correct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.errors import UnknownNameError
from bnlab.norm.ops import library
from bnlab.norm.ops.reference import batch_norm_reference

__all__ = [
    "BackendFn",
    "available_backends",
    "backend_for",
    "get_backend",
    "register_backend",
    "resolve_backend",
]

AUTO = "auto"


class BackendFn(Protocol):
    """The backend signature: ``batch_norm`` without the ``backend`` keyword."""

    def __call__(
        self,
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> Tensor: ...


_BACKENDS: dict[str, Callable[..., Tensor]] = {}


def register_backend(name: str, fn: Callable[..., Tensor], *, replace: bool = False) -> None:
    """Add ``fn`` to the table under ``name``.

    Args:
        name: the name users pass as ``backend=`` (not ``"auto"``).
        fn: ``fn(input, running_mean, running_var, weight, bias, training, momentum, eps)``
            with ``torch.nn.functional.batch_norm`` semantics; it may assume validated
            arguments and a non-empty input.
        replace: allow overwriting an existing name (otherwise that is an error).

    Raises:
        ValueError: ``name`` is ``"auto"``, empty, or taken and ``replace`` is False.
    """
    if not name or name == AUTO:
        raise ValueError(f"backend name must be a non-empty string other than 'auto'; got {name!r}")
    if name in _BACKENDS and not replace:
        raise ValueError(
            f"backend {name!r} is already registered; pass replace=True to overwrite it"
        )
    if not callable(fn):
        raise TypeError(f"backend {name!r} must be callable; got {type(fn).__name__}")
    _BACKENDS[name] = fn


def available_backends() -> tuple[str, ...]:
    """The registered backend names, in registration order (``"auto"`` not included)."""
    return tuple(_BACKENDS)


def get_backend(name: str) -> Callable[..., Tensor]:
    """The function registered as ``name``; raises UnknownNameError if there is none."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UnknownNameError("backend", name, (AUTO, *_BACKENDS)) from None


# Where the fused kernel beats PyTorch's, measured side by side on 2 cores
# (docs/performance.md): least values for training (forward and backward both win) per
# layout, and least bytes for inference. Below them fixed costs (Python glue, thread
# wake-ups) outweigh the saved memory traffic and PyTorch's C++ path is as fast or faster.
# torch's channels-last training kernel is fast only when C is a multiple of 16 (its
# vector width here); with other channel counts it is several times slower on two
# threads, so the fused kernel wins from about a hundred thousand values
# ("channels_last_odd"). Below that the operator's fixed cost (its dispatch and autograd
# glue, paid in forward and backward) outweighs the kernel's gain on one thread or two.
_FUSED_MIN_TRAIN_NUMEL = {
    "contiguous": 1 << 20,
    "channels_last": 1 << 20,
    "channels_last_odd": 1 << 17,
}
# Under torch.compile the rival is inductor's generated code, which fuses batch norm with
# its neighbours (the ReLU after it, the residual addition). On contiguous tensors the
# opaque kernel never wins in a real network: torchvision's ResNet-18 (batch 16, 224x224,
# 2 threads), compiled, stepped 1.07x torch's with the kernel on its 12.8M-value stem and
# 0.94x with inductor's code everywhere (2026-12-08, three interleaved rounds). Channels-last
# limits are the layer-alone measurements (docs/performance.md, "Compiled").
_FUSED_MIN_TRAIN_NUMEL_COMPILED: dict[str, float] = {
    "contiguous": float("inf"),
    "channels_last": 1 << 20,
    "channels_last_odd": 1 << 20,
}
# Inference is one read and one write in either kernel, and both allocate their output
# the same way: "auto" leaves it to torch's.
# Fewer values than this never go to the fused kernel (the least of the limits above).
_FUSED_MIN_NUMEL = min(_FUSED_MIN_TRAIN_NUMEL.values())


def _auto_rule(input: Tensor, training: bool) -> str:
    """Which backend ``"auto"`` means for this call. Extend this rule, and only this one.

    ``"fused"`` (bnlab's numba kernels as the operator ``bnlab::fused_batch_norm``) for
    training on CPU float32/float64 inputs large enough that it wins: at least
    ``_FUSED_MIN_TRAIN_NUMEL[layout]`` values (``_FUSED_MIN_TRAIN_NUMEL_COMPILED`` while
    ``torch.compile`` traces). ``"native"`` (``torch.nn.functional.batch_norm``)
    otherwise: inference, CUDA, half precision, small tensors, and symbolic shapes
    (``torch.export`` or ``torch.compile`` with a dynamic dimension: deciding by size
    would specialise the graph on that dimension). Native's known weakness: float32
    batches with a mean far larger than their spread (mean 1e4, std 1e-2) lose about 5%
    of a standard deviation; ``"reference"`` and ``"fused"`` keep those exact (see
    docs/norm.md).
    """
    numel = input.numel()
    if type(numel) is not int:  # a SymInt: no guard on the size may be taken
        return "native"
    if not training or numel < _FUSED_MIN_NUMEL or not input.is_cpu:
        return "native"  # the common cases first: this runs on every call
    if input.dtype not in (torch.float32, torch.float64):
        return "native"
    if input.is_contiguous():
        layout = "contiguous"
    else:
        layout = "channels_last" if input.shape[1] % 16 == 0 else "channels_last_odd"
    compiled = torch.compiler.is_compiling()
    least = (_FUSED_MIN_TRAIN_NUMEL_COMPILED if compiled else _FUSED_MIN_TRAIN_NUMEL)[layout]
    return "fused" if numel >= least else "native"


def resolve_backend(backend: str, input: Tensor, training: bool) -> str:
    """The concrete backend name for a call: ``backend`` itself, or the ``"auto"`` choice.

    Raises:
        UnknownNameError: ``backend`` is neither ``"auto"`` nor registered.
    """
    if backend == AUTO:
        return _auto_rule(input, training)
    if backend not in _BACKENDS:
        raise UnknownNameError("backend", backend, (AUTO, *_BACKENDS))
    return backend


def backend_for(backend: str, input: Tensor, training: bool) -> Callable[..., Tensor]:
    """The function to call for ``backend`` (``"auto"`` resolved by :func:`_auto_rule`).

    The hot path of every batch-norm call: one rule and one dictionary lookup.

    Raises:
        UnknownNameError: ``backend`` is neither ``"auto"`` nor registered.
    """
    return _BACKENDS[resolve_backend(backend, input, training)]


def _native(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """PyTorch's own kernel (``torch.nn.functional.batch_norm``).

    ``batch_norm`` has validated the arguments already, so this calls the ATen op that
    ``F.batch_norm`` wraps, skipping that wrapper's second round of Python checks (a few
    microseconds, a tenth of a small layer's whole call). Training with ``eps <= 0``
    still goes through ``F.batch_norm``, which refuses it. cuDNN's switch is read only
    for CUDA inputs (reading it costs time on every call, and the CPU kernel ignores it).
    """
    if training and eps <= 0.0:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return torch.batch_norm(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        training,
        momentum,
        eps,
        input.is_cuda and torch.backends.cudnn.enabled,
    )


def _reference(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """bnlab's readable implementation with an analytic backward (``reference.py``)."""
    return batch_norm_reference(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )


# The fused kernels as a registered PyTorch operator (``library.py``): ATen's kernel where
# an opaque operator cannot be represented (jit.trace, ONNX, torch.func).
_fused = library.batch_norm_fused


register_backend("native", _native)
register_backend("reference", _reference)
register_backend("fused", _fused)
