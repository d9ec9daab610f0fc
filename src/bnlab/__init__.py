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
    "BatchNorm1d": "bnlab.norm.layers.modules",
    "BatchNorm2d": "bnlab.norm.layers.modules",
    "BatchNorm3d": "bnlab.norm.layers.modules",
    "BatchNormAct2d": "bnlab.norm.layers.act",
    "RewriteWarning": "bnlab.norm.layers.act",
    "batch_norm": "bnlab.norm.ops.functional",
    "batch_stats": "bnlab.norm.ops.functional",
    "decay_from_momentum": "bnlab.norm.ops.functional",
    "momentum_from_decay": "bnlab.norm.ops.functional",
    "normalize": "bnlab.norm.ops.functional",
    "update_running_stats": "bnlab.norm.ops.functional",
    "available_norms": "bnlab.norm.layers.registry",
    "get_norm": "bnlab.norm.layers.registry",
    "register_norm": "bnlab.norm.layers.registry",
    "DoctorReport": "bnlab.norm.tools.doctor",
    "doctor": "bnlab.norm.tools.doctor",
    "FrozenBatchNorm": "bnlab.norm.layers.frozen",
    "freeze_bn": "bnlab.norm.layers.frozen",
    "PreciseStats": "bnlab.norm.tools.precise",
    "precise_bn": "bnlab.norm.tools.precise",
    "SyncBatchNorm": "bnlab.norm.layers.sync",
    "convert_sync_batchnorm": "bnlab.norm.layers.sync",
    "convert_batchnorm": "bnlab.norm.tools.interop",
    "fold_bn": "bnlab.norm.tools.fold",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from bnlab.norm.layers.act import BatchNormAct2d, RewriteWarning
    from bnlab.norm.layers.frozen import FrozenBatchNorm, freeze_bn
    from bnlab.norm.layers.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
    from bnlab.norm.layers.registry import available_norms, get_norm, register_norm
    from bnlab.norm.layers.sync import SyncBatchNorm, convert_sync_batchnorm
    from bnlab.norm.ops.functional import (
        batch_norm,
        batch_stats,
        decay_from_momentum,
        momentum_from_decay,
        normalize,
        update_running_stats,
    )
    from bnlab.norm.tools.doctor import DoctorReport, doctor
    from bnlab.norm.tools.fold import fold_bn
    from bnlab.norm.tools.interop import convert_batchnorm
    from bnlab.norm.tools.precise import PreciseStats, precise_bn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct2d",
    "DoctorReport",
    "FrozenBatchNorm",
    "PreciseStats",
    "RewriteWarning",
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
