"""The batch-norm core: functional math, modules, kernels, variants, sync, folding,
precise statistics and diagnostics. Depends on torch (and the kernel library) only.

Public names are re-exported here explicitly; modules that register norms or backends
are imported here so the registries are complete once ``bnlab.norm`` is imported.
"""

from __future__ import annotations

from bnlab.norm.bn_relu import BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d
from bnlab.norm.dispatch import available_backends, register_backend, resolve_backend
from bnlab.norm.doctor import DoctorReport, Finding, doctor
from bnlab.norm.fold import fold_bn, fold_bn_weights
from bnlab.norm.frozen import FrozenBatchNorm, freeze_bn
from bnlab.norm.functional import (
    batch_norm,
    batch_stats,
    decay_from_momentum,
    momentum_from_decay,
    normalize,
    unbiased_var,
    update_running_stats,
)
from bnlab.norm.fuse import fuse_bn_relu
from bnlab.norm.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from bnlab.norm.graph import FoldWarning, RewriteReport
from bnlab.norm.group import GroupNorm, InstanceNorm, LayerNorm
from bnlab.norm.interop import convert_batchnorm
from bnlab.norm.modules import BATCH_NORM_TYPES, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.precise import PreciseStats, precise_bn
from bnlab.norm.recurrent import RecurrentBatchNorm
from bnlab.norm.reference import BatchNormFunction, batch_norm_reference
from bnlab.norm.registry import available_norms, get_norm, register_norm
from bnlab.norm.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, RenormSchedule
from bnlab.norm.safe import label_layers, refusals
from bnlab.norm.sync import SyncBatchNorm, convert_sync_batchnorm

__all__ = [
    "BATCH_NORM_TYPES",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "DoctorReport",
    "Finding",
    "FoldWarning",
    "FrozenBatchNorm",
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
    "SyncBatchNorm",
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
    "fuse_bn_relu",
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
