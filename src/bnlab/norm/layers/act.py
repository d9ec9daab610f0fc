"""Batch norm followed by an activation in one layer, and what the rewrite tools know of
batch-norm subclasses.

timm builds most of its networks from ``BatchNormAct2d``: a subclass of
``torch.nn.BatchNorm2d`` whose ``forward`` applies a dropout module (``drop``) and an
activation module (``act``) after the normalization, so that its ``state_dict`` is the
plain batch norm's. A tool that sees only ``isinstance(m, nn.BatchNorm2d)`` and replaces
the layer (by a fold, a converter) silently drops the activation. :func:`anatomy` is the
one place that says what a batch-norm layer computes, and :class:`BatchNormAct2d` is
bnlab's equivalent of timm's layer (same ``state_dict``, bnlab's kernels).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch  # noqa: F401  (the doctests' namespace)
from torch import Tensor, nn
from torch.fx import Proxy

from bnlab.norm.layers.modules import BatchNorm2d, _BatchNorm, _fx_leaf

__all__ = ["Anatomy", "BatchNormAct2d", "RewriteWarning", "anatomy", "warn_left"]


class RewriteWarning(UserWarning):
    """A model rewrite (a converter, a fold) left some layers as they were; the text names
    each one and says why."""


def warn_left(tool: str, left: dict[str, str], stacklevel: int = 3) -> None:
    """Warn (:class:`RewriteWarning`) that ``tool`` left the layers ``left`` (name -> why)."""
    if left:
        lines = [f"{tool}: {len(left)} batch-norm layer(s) left as they were"]
        lines += [f"  left  {name or '(the model itself)'}: {why}" for name, why in left.items()]
        warnings.warn("\n".join(lines), RewriteWarning, stacklevel=stacklevel)


def unknown_subclass(module: nn.Module) -> str:
    """Why a tool leaves a batch-norm subclass whose ``forward`` it does not know."""
    return (
        f"{type(module).__module__}.{type(module).__qualname__} overrides forward, so it may "
        "compute more than batch norm; replacing it could change the model's output"
    )


class ActAfter(nn.Module):
    """Mixin for a bnlab batch-norm class: ``act(drop(batch_norm(x)))``.

    ``drop`` and ``act`` are child modules, so a model's ``state_dict`` keys are those of
    the layer it replaces (timm's ``BatchNormAct2d``: ``weight``, ``bias``, running
    statistics, and any state ``act`` holds, such as a PReLU's weight).
    """

    drop: nn.Module
    act: nn.Module

    def __init__(
        self, *args: Any, act: nn.Module | None = None, drop: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """The batch-norm class's own arguments, plus keyword-only ``act`` (default
        ``nn.ReLU()``) and ``drop`` (default ``nn.Identity()``)."""
        super().__init__(*args, **kwargs)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.ReLU()

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, Proxy):  # symbolic tracing: one call_module node for all three
            return _fx_leaf(self, input)
        y: Tensor = super().forward(input)
        return self.act(self.drop(y))

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript form: torch's batch norm (sharing this layer's tensors), drop, act."""
        bn = super().__prepare_scriptable__()  # type: ignore[misc]
        return nn.Sequential(bn, self.drop, self.act)


class BatchNormAct2d(ActAfter, BatchNorm2d):
    """``act(drop(BatchNorm2d(x)))``: bnlab's counterpart of timm's ``BatchNormAct2d``.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as
            :class:`~bnlab.norm.layers.modules.BatchNorm2d`.
        act: the activation module applied last (default ``nn.ReLU()``).
        drop: a module applied between batch norm and ``act`` (default ``nn.Identity()``).
        **kwargs: bnlab's keyword-only batch-norm options (``backend=``, ``decay=``, ...).

    ``bnlab.convert_batchnorm`` turns timm's layer into this one, keeping its ``act`` and
    ``drop`` modules; ``bnlab.fold_bn`` folds the batch norm into the conv before it and
    keeps ``drop`` and ``act``.

    >>> layer = BatchNormAct2d(3, act=nn.SiLU())
    >>> y = layer(torch.randn(4, 3, 5, 5))
    >>> sorted(layer.state_dict())
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """


@dataclass(frozen=True)
class Anatomy:
    """What a batch-norm layer computes, as the rewrite tools need to know it.

    Attributes:
        tail: the module applied after the normalization (``act``, or
            ``nn.Sequential(drop, act)`` when ``drop`` is not an identity, for timm's and
            bnlab's ``BatchNormAct2d``), or None for plain batch norm.
        act_class: the bnlab class that computes the same as a torch or timm layer with a
            tail (:class:`BatchNormAct2d` for timm's ``BatchNormAct2d``); None otherwise.
    """

    tail: nn.Module | None = None
    act_class: type[nn.Module] | None = None


def anatomy(module: nn.Module) -> Anatomy | None:
    """What batch-norm layer ``module`` computes, or None when bnlab does not know.

    Known: torch's batch-norm classes and subclasses that keep their ``forward`` (plain
    batch norm), bnlab's batch-norm classes (their variants normalize as batch norm in
    eval mode), and the batch norm + activation layers of timm and bnlab
    (``BatchNormAct2d``, timm's ``SyncBatchNormAct``: a tail of ``drop`` then ``act``).
    A subclass that overrides ``forward`` otherwise may compute anything: the tools
    leave it as it is and name it in a warning.

    >>> anatomy(nn.BatchNorm2d(3)).tail is None
    True
    >>> class Shifted(nn.BatchNorm2d):
    ...     def forward(self, x):
    ...         return super().forward(x) + 1
    >>> anatomy(Shifted(3)) is None
    True
    """
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None
    forward = type(module).forward
    if isinstance(module, ActAfter) and forward is ActAfter.forward:
        return Anatomy(_tail(module))
    if forward in _PLAIN_FORWARDS or (
        isinstance(module, _BatchNorm) and forward.__module__.startswith("bnlab.")
    ):
        return Anatomy()
    timm = _timm_act_forwards()
    if forward in timm:
        return Anatomy(_tail(module), timm[forward])
    return None


def _tail(module: nn.Module) -> nn.Module:
    """``module.act`` after ``module.drop`` (the act alone when drop is an identity)."""
    drop, act = module.drop, module.act
    assert isinstance(drop, nn.Module) and isinstance(act, nn.Module)
    return act if isinstance(drop, nn.Identity) else nn.Sequential(drop, act)


#: ``forward`` of torch's batch-norm classes: the base's, and SyncBatchNorm's.
_PLAIN_FORWARDS: tuple[Callable[..., Any], ...] = (
    nn.modules.batchnorm._BatchNorm.forward,
    nn.SyncBatchNorm.forward,
)


def _timm_act_forwards() -> dict[Callable[..., Any], type[nn.Module] | None]:
    """``forward`` of timm's batch norm + activation layers -> bnlab's class for them, if
    timm has been imported (a model holding them has imported it)."""
    norm_act = sys.modules.get("timm.layers.norm_act")
    if norm_act is None:
        return {}
    known = {"BatchNormAct2d": BatchNormAct2d, "SyncBatchNormAct": None}
    return {getattr(norm_act, n).forward: c for n, c in known.items() if hasattr(norm_act, n)}
