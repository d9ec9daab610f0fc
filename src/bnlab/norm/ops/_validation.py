"""Argument checks shared by the batch-norm functions, backends and modules.

Each check raises ``TypeError``/``ValueError`` with a message that names what was expected
and what arrived, so every backend rejects bad input the same way, before any math runs.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

#: Half-precision dtypes: computed in float32, and allowed float32 parameters.
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def normalize_dim(dim: int, ndim: int) -> int:
    """``dim`` as a non-negative index into ``ndim`` dims (``-1`` -> ``ndim - 1``)."""
    if not -ndim <= dim < ndim:
        raise ValueError(f"channel_dim {dim} is out of range for a {ndim}-D tensor")
    return dim % ndim


def check_float_tensor(name: str, x: object) -> None:
    """``x`` must be a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")


def check_num_features(num_features: object) -> int:
    """``num_features`` as a positive ``int``; any integer type (NumPy's too) is accepted.

    Raises:
        TypeError: not an integer (bools and floats included).
        ValueError: less than 1.
    """
    if isinstance(num_features, bool) or not hasattr(num_features, "__index__"):
        raise TypeError(f"num_features must be an int; got {type(num_features).__name__}")
    n = operator.index(num_features)
    if n < 1:
        raise ValueError(f"num_features must be >= 1; got {n}")
    return n


def check_eps(eps: object) -> float:
    """``eps`` as a float if it is a finite number >= 0, else ValueError."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return float(eps)


def check_channels(layer: str, num_features: int, input: Tensor) -> None:
    """``input`` has ``num_features`` channels in dim 1 (ValueError naming both shapes)."""
    if input.shape[1] != num_features:
        expected = list(input.shape)
        expected[1] = num_features
        raise ValueError(
            f"{layer}({num_features}) expected input with {num_features} channels in dim 1, "
            f"shape {tuple(expected)}; got shape {tuple(input.shape)}"
        )


def values_per_channel(input: Tensor) -> int:
    """How many values each channel (dim 1) holds: ``numel / C``."""
    return input.numel() // input.shape[1] if input.shape[1] > 0 else 0


def check_one_value_per_channel(input: Tensor) -> None:
    """Training statistics need at least two values per channel."""
    if values_per_channel(input) == 1:
        raise ValueError(
            f"batch norm in training mode needs more than one value per channel to compute "
            f"a batch variance (the variance of a single value is undefined); got input of "
            f"shape {tuple(input.shape)}, which holds one value per channel. Use eval mode "
            f"(module.eval(), or training=False) to normalize with the running statistics, "
            f"or feed a larger batch."
        )


def check_batch_norm_args(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> None:
    """Every argument check of ``batch_norm`` (the contract of all backends).

    The common case (float tensors of one dtype and the right shapes) is accepted by a
    few attribute comparisons; anything else goes through the detailed checks, which
    raise with a message naming what was wrong (or accept, e.g. half input with float32
    parameters). Batch norm on small layers costs tens of microseconds, so the checks
    must cost far less.
    """
    if _plainly_valid(input, running_mean, running_var, weight, bias, training, momentum, eps):
        return
    _check_batch_norm_args_in_detail(
        input, running_mean, running_var, weight, bias, training, momentum, eps
    )


def _plainly_valid(
    input: object,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: object,
    eps: object,
) -> bool:
    """True for the usual valid call; False means "look closer", not "invalid"."""
    if not isinstance(input, Tensor) or not input.is_floating_point() or input.dim() < 2:
        return False
    dtype, shape = input.dtype, (input.shape[1],)
    for t in (running_mean, running_var, weight, bias):
        if t is not None and (not isinstance(t, Tensor) or t.dtype != dtype or t.shape != shape):
            return False
    if (running_mean is None) != (running_var is None) or (not training and running_mean is None):
        return False
    if type(momentum) is not float or not 0.0 <= momentum <= 1.0:
        return False
    if type(eps) is not float or not 0.0 <= eps < math.inf or (training and eps == 0.0):
        return False
    return not training or input.numel() != shape[0]


def _check_batch_norm_args_in_detail(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> None:
    check_float_tensor("input", input)
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm expects input of shape (N, C, *) with at least 2 dims; got shape "
            f"{tuple(input.shape)}"
        )
    num_channels = input.shape[1]
    tensors = {"running_mean": running_mean, "running_var": running_var}
    tensors.update(weight=weight, bias=bias)
    for name, t in tensors.items():
        if t is None:
            continue
        check_float_tensor(name, t)
        if tuple(t.shape) != (num_channels,):
            raise ValueError(
                f"{name} must have shape ({num_channels},) to match the {num_channels} "
                f"channels of input {tuple(input.shape)}; got shape {tuple(t.shape)}"
            )
        # torch's rules: half input may use float32 parameters, and an empty batch
        # (which computes nothing) may meet parameters of any float dtype.
        reduced_ok = input.dtype in REDUCED_PRECISION and t.dtype == torch.float32
        if t.dtype != input.dtype and not reduced_ok and input.numel() > 0:
            raise TypeError(
                f"{name} has dtype {t.dtype} but input has dtype {input.dtype}; they must "
                f"match (half inputs may also use float32 parameters). Convert the module "
                f"(e.g. .to({input.dtype})) or the input."
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must be given together or both be None; got "
            f"running_mean={'None' if running_mean is None else 'a tensor'}, "
            f"running_var={'None' if running_var is None else 'a tensor'}"
        )
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm in eval mode (training=False) normalizes with the running "
            "statistics, but running_mean and running_var are None; pass them, or use "
            "training=True to normalize with the batch statistics"
        )
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1]; got {momentum!r}")
    if not isinstance(eps, (int, float)) or eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    if training and eps == 0:
        raise ValueError(
            "eps must be > 0 in training mode (a batch whose channel is constant has "
            "variance 0, and 1/sqrt(0 + eps) would be infinite; torch refuses it too); "
            f"got eps={eps!r}. Use e.g. eps=1e-5."
        )
    if training:
        check_one_value_per_channel(input)
