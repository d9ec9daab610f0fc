"""The batch-norm core: functional math, modules, kernels, variants, sync, folding,
precise statistics and diagnostics. Depends on torch (and the kernel library) only.

Public names are re-exported here explicitly; modules that register norms or backends
are imported here so the registries are complete once ``bnlab.norm`` is imported.
"""

from __future__ import annotations

from bnlab.norm.dispatch import available_backends, register_backend, resolve_backend
from bnlab.norm.fold import fold_bn, fold_bn_weights
from bnlab.norm.functional import (
    batch_norm,
    batch_stats,
    decay_from_momentum,
    momentum_from_decay,
    normalize,
    unbiased_var,
    update_running_stats,
)
from bnlab.norm.modules import BATCH_NORM_TYPES, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.reference import BatchNormFunction, batch_norm_reference
from bnlab.norm.registry import available_norms, get_norm, register_norm

__all__ = [
    "BATCH_NORM_TYPES",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "available_backends",
    "available_norms",
    "batch_norm",
    "batch_norm_reference",
    "batch_stats",
    "decay_from_momentum",
    "fold_bn",
    "fold_bn_weights",
    "get_norm",
    "momentum_from_decay",
    "normalize",
    "register_backend",
    "register_norm",
    "resolve_backend",
    "unbiased_var",
    "update_running_stats",
]
