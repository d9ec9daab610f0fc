"""Fused CPU batch-norm kernels (numba): training forward, backward and inference forward.

The ``"fused"`` backend of :func:`bnlab.norm.functional.batch_norm`. Array kernels live in
``_numba.py``; the torch glue, memory-schedule planning and autograd Function in
``fused.py``; batch norm fused with the following ReLU (modules, model transform) in
``fusion.py``.
"""

from __future__ import annotations

from bnlab.norm.kernels.fused import (
    SUPPORTED_DTYPES,
    FusedBatchNormFunction,
    Plan,
    batch_norm_fused,
    fused_batch_norm,
    is_supported,
    plan_for,
    warmup,
)
from bnlab.norm.kernels.fusion import (
    BatchNormReLU1d,
    BatchNormReLU2d,
    BatchNormReLU3d,
    fuse_bn_relu,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "FusedBatchNormFunction",
    "Plan",
    "batch_norm_fused",
    "fuse_bn_relu",
    "fused_batch_norm",
    "is_supported",
    "plan_for",
    "warmup",
]
