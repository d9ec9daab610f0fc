"""bnlab: batch normalization done right, on PyTorch.

The public API is re-exported here explicitly; implementation lives in the layer
packages (``bnlab.norm``, ``bnlab.data``, ...). See ``docs/architecture.md``.
Re-exports load on first use, so ``import bnlab`` (and ``bnlab --help``) skips torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it; imported on first attribute access.
_EXPORTS: dict[str, str] = {
    "BatchNorm1d": "bnlab.norm.modules",
    "BatchNorm2d": "bnlab.norm.modules",
    "BatchNorm3d": "bnlab.norm.modules",
    "batch_norm": "bnlab.norm.functional",
    "batch_stats": "bnlab.norm.functional",
    "decay_from_momentum": "bnlab.norm.functional",
    "momentum_from_decay": "bnlab.norm.functional",
    "normalize": "bnlab.norm.functional",
    "update_running_stats": "bnlab.norm.functional",
    "available_norms": "bnlab.norm.registry",
    "get_norm": "bnlab.norm.registry",
    "register_norm": "bnlab.norm.registry",
    "DoctorReport": "bnlab.norm.doctor",
    "doctor": "bnlab.norm.doctor",
    "FrozenBatchNorm": "bnlab.norm.frozen",
    "freeze_bn": "bnlab.norm.frozen",
    "PreciseStats": "bnlab.norm.precise",
    "precise_bn": "bnlab.norm.precise",
    "SyncBatchNorm": "bnlab.norm.sync",
    "convert_sync_batchnorm": "bnlab.norm.sync",
    "convert_batchnorm": "bnlab.norm.interop",
    "fold_bn": "bnlab.norm.fold",
    "BatchNormReLU1d": "bnlab.norm.bn_relu",
    "BatchNormReLU2d": "bnlab.norm.bn_relu",
    "BatchNormReLU3d": "bnlab.norm.bn_relu",
    "fuse_bn_relu": "bnlab.norm.fuse",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from bnlab.norm.bn_relu import BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d
    from bnlab.norm.doctor import DoctorReport, doctor
    from bnlab.norm.fold import fold_bn
    from bnlab.norm.frozen import FrozenBatchNorm, freeze_bn
    from bnlab.norm.functional import (
        batch_norm,
        batch_stats,
        decay_from_momentum,
        momentum_from_decay,
        normalize,
        update_running_stats,
    )
    from bnlab.norm.fuse import fuse_bn_relu
    from bnlab.norm.interop import convert_batchnorm
    from bnlab.norm.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
    from bnlab.norm.precise import PreciseStats, precise_bn
    from bnlab.norm.registry import available_norms, get_norm, register_norm
    from bnlab.norm.sync import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "DoctorReport",
    "FrozenBatchNorm",
    "PreciseStats",
    "SyncBatchNorm",
    "__version__",
    "available_norms",
    "batch_norm",
    "batch_stats",
    "convert_batchnorm",
    "convert_sync_batchnorm",
    "decay_from_momentum",
    "doctor",
    "fold_bn",
    "freeze_bn",
    "fuse_bn_relu",
    "get_norm",
    "momentum_from_decay",
    "normalize",
    "precise_bn",
    "register_norm",
    "update_running_stats",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bnlab' has no attribute {name!r}")
    # Importing bnlab.norm (not only the defining module) completes the registries.
    importlib.import_module("bnlab.norm")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
