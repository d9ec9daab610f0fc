"""The batch-norm core: functional math, modules, kernels, variants, sync, folding,
precise statistics and diagnostics. Depends on torch (and the kernel library) only.

Public names are re-exported here explicitly; modules that register norms or backends
are imported here so the registries are complete once ``bnlab.norm`` is imported.
"""

from __future__ import annotations

from bnlab.norm.layers.act import BatchNormAct2d, RewriteWarning, anatomy
from bnlab.norm.layers.frozen import FrozenBatchNorm, freeze_bn
from bnlab.norm.layers.ghost import (
    GhostBatchNorm,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNorm3d,
)
from bnlab.norm.layers.group import GroupNorm, InstanceNorm, LayerNorm
from bnlab.norm.layers.modules import BATCH_NORM_TYPES, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.layers.recurrent import RecurrentBatchNorm
from bnlab.norm.layers.registry import available_norms, get_norm, register_norm
from bnlab.norm.layers.renorm import (
    BatchRenorm,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    RenormSchedule,
)
from bnlab.norm.layers.safe import label_layers, refusals
from bnlab.norm.layers.sync import SyncBatchNorm, SyncBatchNormAct, convert_sync_batchnorm
from bnlab.norm.ops.dispatch import available_backends, register_backend, resolve_backend
from bnlab.norm.ops.functional import (
    batch_norm,
    batch_stats,
    decay_from_momentum,
    momentum_from_decay,
    normalize,
    unbiased_var,
    update_running_stats,
)
from bnlab.norm.ops.reference import BatchNormFunction, batch_norm_reference
from bnlab.norm.tools.doctor import DoctorReport, Finding, doctor
from bnlab.norm.tools.fold import fold_bn, fold_bn_weights
from bnlab.norm.tools.graph import FoldWarning, RewriteReport
from bnlab.norm.tools.interop import convert_batchnorm
from bnlab.norm.tools.precise import PreciseStats, precise_bn

__all__ = [
    "BATCH_NORM_TYPES",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct2d",
    "BatchNormFunction",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "DoctorReport",
    "Finding",
    "FoldWarning",
    "FrozenBatchNorm",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "PreciseStats",
    "RecurrentBatchNorm",
    "RenormSchedule",
    "RewriteReport",
    "RewriteWarning",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "anatomy",
    "available_backends",
    "available_norms",
    "batch_norm",
    "batch_norm_reference",
    "batch_stats",
    "convert_batchnorm",
    "convert_sync_batchnorm",
    "decay_from_momentum",
    "doctor",
    "fold_bn",
    "fold_bn_weights",
    "freeze_bn",
    "get_norm",
    "label_layers",
    "momentum_from_decay",
    "normalize",
    "precise_bn",
    "refusals",
    "register_backend",
    "register_norm",
    "resolve_backend",
    "unbiased_var",
    "update_running_stats",
]
