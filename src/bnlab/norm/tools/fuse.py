"""Fusing each batch norm with the ReLU that consumes it: :func:`fuse_bn_relu`.

The pairs come from the model's FX graph (``graph.find_pairs``); each BN becomes a
``BatchNormReLU*d`` (``bnlab.norm.layers.bn_relu``) with the same state and mode.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from typing import Literal, overload

from torch import nn

from bnlab.norm.layers.bn_relu import BatchNormReLU1d, BatchNormReLU2d, BatchNormReLU3d, _ReLUAfter
from bnlab.norm.layers.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.ops import dispatch
from bnlab.norm.tools.graph import FoldWarning, RewriteReport, find_pairs

__all__ = ["fuse_bn_relu"]


# Exactly these BN classes are fused: subclasses (sync, ghost, frozen, ...) change what
# ``_batch_norm`` does, and the fused module would silently drop that.
_FUSED_CLASS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: BatchNormReLU1d,
    nn.BatchNorm2d: BatchNormReLU2d,
    nn.BatchNorm3d: BatchNormReLU3d,
    BatchNorm1d: BatchNormReLU1d,
    BatchNorm2d: BatchNormReLU2d,
    BatchNorm3d: BatchNormReLU3d,
}


def _fused_copy(bn: nn.Module) -> nn.Module:
    """A ``BatchNormReLU*d`` with ``bn``'s configuration, state and train/eval mode."""
    cls = _FUSED_CLASS[type(bn)]
    weight = getattr(bn, "weight", None)
    reference = weight if weight is not None else getattr(bn, "running_mean", None)
    fused = cls(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bool(bn.affine),
        track_running_stats=bool(bn.track_running_stats),
        dtype=reference.dtype if reference is not None else None,
        backend=getattr(bn, "backend", dispatch.AUTO),
        bias=getattr(bn, "bias", None) is not None or not bn.affine,  # torch's bias=False
    )
    fused.load_state_dict(bn.state_dict())
    fused.train(bn.training)
    return fused


@overload
def fuse_bn_relu(model: nn.Module, *, return_report: Literal[False] = ...) -> nn.Module: ...


@overload
def fuse_bn_relu(
    model: nn.Module, *, return_report: Literal[True]
) -> tuple[nn.Module, RewriteReport]: ...


def fuse_bn_relu(
    model: nn.Module, *, return_report: bool = False
) -> nn.Module | tuple[nn.Module, RewriteReport]:
    """A copy of ``model`` where each BN directly followed by a ReLU runs as one fused layer.

    "Directly followed" is read from the model's ``torch.fx`` graph: the ReLU (an
    ``nn.ReLU``, ``F.relu``/``torch.relu`` or ``Tensor.relu``) is the only consumer of the
    BN's output, wherever the two are called (``nn.Sequential``, a custom ``forward``, a
    residual block); a model FX cannot trace falls back to adjacent children of
    ``nn.Sequential``. The BN (``torch.nn`` or bnlab ``BatchNorm1d/2d/3d``, not their
    subclasses) becomes a ``BatchNormReLU*d`` with the same state and mode. An
    ``nn.ReLU`` used only there becomes ``nn.Identity``; a shared ReLU module or a
    functional ReLU stays (applying ReLU twice is ReLU). Names, indices and ``state_dict``
    keys stay the same. Works in training and eval mode. The input model is not changed.
    BN layers left as they were are listed, each with its reason, in the report and a
    :class:`~bnlab.norm.tools.graph.FoldWarning`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    >>> [type(m).__name__ for m in fuse_bn_relu(net)]
    ['Conv2d', 'BatchNormReLU2d', 'Identity']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_bn_relu expects an nn.Module; got {type(model).__name__}")
    fused = copy.deepcopy(model)
    report = RewriteReport("fuse_bn_relu")
    pairs = find_pairs(fused, lambda m: type(m) in _FUSED_CLASS, "relu", report)
    uses = Counter(id(m) for _, m in fused.named_modules(remove_duplicate=False))
    done = set()
    for pair in pairs:
        fused.set_submodule(pair.first, _fused_copy(fused.get_submodule(pair.first)))
        done.add(pair.first)
        relu_module = fused.get_submodule(pair.second) if pair.kind == "module" else None
        if relu_module is not None and not pair.shared and uses[id(relu_module)] == 1:
            fused.set_submodule(pair.second, nn.Identity())
            report.done.append(f"{pair.first} + {pair.second}")
            continue
        relu = pair.second or "a functional relu"
        report.done.append(f"{pair.first} + {relu} ({relu} kept: used elsewhere or functional)")
    for name, m in fused.named_modules():
        if name in done or isinstance(m, _ReLUAfter):
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            report.left[name] = (
                "not a plain BatchNorm1d/2d/3d"
                if type(m) not in _FUSED_CLASS
                else "its output does not go to a ReLU alone (e.g. to an addition first)"
            )
    if report.left:
        warnings.warn(str(report), FoldWarning, stacklevel=2)
    return (fused, report) if return_report else fused
