"""bnlab's layers among torch's tools: conversion from ``torch.nn`` batch norm, and the
type-keyed registries that ``isinstance`` does not reach.

bnlab's ``BatchNorm1d/2d/3d`` subclass torch's, so every ``isinstance``-based tool (FX
fusers, weight-decay filters, ``nn.SyncBatchNorm.convert_sync_batchnorm``,
``torch.func.replace_all_batch_norm_modules_``) already treats them as batch norm.
``torch.ao.quantization.fuse_modules`` looks layers up by exact type instead; importing
``bnlab.norm`` adds bnlab's classes to its table (:func:`register_quantization_fusers`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.ao.quantization import fuser_method_mappings

from bnlab.norm.layers.act import anatomy, unknown_subclass, warn_left
from bnlab.norm.layers.modules import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    _BatchNorm,
    as_torch_batch_norm,
)

__all__ = ["convert_batchnorm", "register_quantization_fusers"]

#: torch.nn's batch-norm class -> bnlab's drop-in.
BNLAB_CLASS: dict[type[nn.Module], type[_BatchNorm]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}


def register_quantization_fusers() -> None:
    """Let ``torch.ao.quantization.fuse_modules`` and ``fuse_modules_qat`` fuse
    (conv/linear, bnlab BN[, ReLU]).

    Each entry of torch's default fuser table that names a ``torch.nn`` batch-norm class
    gets a twin naming bnlab's class. Its method hands torch's method the ``torch.nn``
    layer that shares the bnlab layer's parameters and buffers (torch's fused modules
    check exact types; quantization-aware training then trains torch's batch norm in
    place of bnlab's, as it does for torch's own). Idempotent.
    """
    table = fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD
    for key, method in list(table.items()):
        if any(t in BNLAB_CLASS for t in key):
            twin = tuple(BNLAB_CLASS.get(t, t) for t in key)
            table.setdefault(twin, _with_torch_batch_norm(method))


def _with_torch_batch_norm(method: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``method(is_qat, *modules)`` with each bnlab batch norm given as its torch twin."""

    def fuse(is_qat: bool, *modules: nn.Module) -> nn.Module:
        twins = [_torch_twin(m) if isinstance(m, _BatchNorm) else m for m in modules]
        return method(is_qat, *twins)

    return fuse


def _torch_twin(layer: _BatchNorm) -> nn.Module:
    return as_torch_batch_norm(layer, layer._torch_class)


def convert_batchnorm(module: nn.Module, **kwargs: Any) -> nn.Module:
    """A new model in which every ``torch.nn.BatchNorm1d/2d/3d`` is bnlab's drop-in.

    The new layers keep the configuration, train/eval mode, and the very Parameter and
    buffer objects of the old ones (an optimizer built before keeps working); ``module``
    itself keeps its layers. Other modules are copied as they are. timm's
    ``BatchNormAct2d`` becomes :class:`~bnlab.norm.layers.act.BatchNormAct2d` with the
    same ``drop`` and ``act`` modules. Any other batch-norm subclass (one that overrides
    ``forward``, or torch's ``SyncBatchNorm``) is left as it is, and a
    :class:`~bnlab.norm.layers.act.RewriteWarning` names it.

    Args:
        module: a model, or a single batch-norm layer.
        **kwargs: bnlab-only keywords for the new layers (``backend=``, ``degenerate=``,
            ``guard_nonfinite=``).

    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    >>> converted = convert_batchnorm(net)
    >>> type(converted[1]).__module__, converted[1].weight is net[1].weight
    ('bnlab.norm.layers.modules', True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module; got {type(module).__name__}")
    shared: dict[int, Any] = {
        id(t): t for t in itertools.chain(module.parameters(), module.buffers())
    }
    left: dict[str, str] = {}
    converted = _convert(copy.deepcopy(module, shared), kwargs, left)
    warn_left("convert_batchnorm", left)
    return converted


def _convert(
    module: nn.Module, kwargs: dict[str, Any], left: dict[str, str], name: str = ""
) -> nn.Module:
    """Swap the layers of an already copied tree (in place; returns the root)."""
    cls = BNLAB_CLASS.get(type(module))
    if cls is not None:
        return as_torch_batch_norm(module, cls, **kwargs)  # type: ignore[arg-type]
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, _BatchNorm):
        shape = anatomy(module)
        if shape is not None and shape.act_class is not None:
            tail = {"act": module.act, "drop": module.drop}
            return as_torch_batch_norm(module, shape.act_class, **tail, **kwargs)  # type: ignore[arg-type]
        left[name] = (
            unknown_subclass(module)
            if shape is None
            else f"{type(module).__name__} is another kind of batch norm (synchronized layers: "
            "bnlab.convert_sync_batchnorm)"
        )
        return module
    for child_name, child in module.named_children():
        new = _convert(child, kwargs, left, f"{name}.{child_name}" if name else child_name)
        if new is not child:
            module.add_module(child_name, new)
    return module


register_quantization_fusers()
