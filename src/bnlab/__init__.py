"""bnlab: batch normalization done right, on PyTorch.

The public API is re-exported here explicitly; implementation lives in the layer
packages (``bnlab.norm``, ``bnlab.data``, ...). See ``docs/architecture.md``.
"""

from __future__ import annotations

from bnlab.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    available_norms,
    batch_norm,
    batch_stats,
    decay_from_momentum,
    fold_bn,
    get_norm,
    momentum_from_decay,
    normalize,
    register_norm,
    update_running_stats,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "__version__",
    "available_norms",
    "batch_norm",
    "batch_stats",
    "decay_from_momentum",
    "fold_bn",
    "get_norm",
    "momentum_from_decay",
    "normalize",
    "register_norm",
    "update_running_stats",
]
