"""Batch norm fused with the ReLU after it: modules and a model transform.

``BatchNormReLU1d/2d/3d`` compute ``relu(batch_norm(x))`` in one pass forward and one
backward (the fused kernel's ``relu=True``) instead of two each; :func:`fuse_bn_relu`
returns a copy of a model with every (BN, ReLU) pair of an ``nn.Sequential`` fused.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn

from bnlab.norm import _validation, dispatch
from bnlab.norm.kernels.fused import batch_norm_fused
from bnlab.norm.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNormReLU1d", "BatchNormReLU2d", "BatchNormReLU3d", "fuse_bn_relu"]


class _ReLUAfter:
    """Mixin: ``_batch_norm`` returns ``relu(batch_norm(x))``, fused when the kernel runs."""

    def _batch_norm(
        self,
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
    ) -> Tensor:
        backend = dispatch.resolve_backend(self.backend, input, training)  # type: ignore[attr-defined]
        if backend == "fused" and input.numel() > 0:
            _validation.check_batch_norm_args(
                input,
                running_mean,
                running_var,
                self.weight,  # type: ignore[attr-defined]
                self.bias,  # type: ignore[attr-defined]
                training,
                momentum,
                self.eps,  # type: ignore[attr-defined]
            )
            return batch_norm_fused(
                input,
                running_mean,
                running_var,
                self.weight,  # type: ignore[attr-defined]
                self.bias,  # type: ignore[attr-defined]
                training,
                momentum,
                self.eps,  # type: ignore[attr-defined]
                relu=True,
            )
        y: Tensor = super()._batch_norm(  # type: ignore[misc]
            input, running_mean, running_var, training, momentum
        )
        return torch.relu(y)


class BatchNormReLU1d(_ReLUAfter, BatchNorm1d):
    """``relu(BatchNorm1d(x))`` in one fused pass; the arguments of :class:`BatchNorm1d`.

    Same parameters, buffers and ``state_dict`` keys as ``BatchNorm1d``, so a trained
    BN's state loads into it. With a backend other than the fused kernel the ReLU is a
    separate ``torch.relu``.

    >>> BatchNormReLU1d(4)(torch.randn(8, 4)).min() >= 0
    tensor(True)
    """


class BatchNormReLU2d(_ReLUAfter, BatchNorm2d):
    """``relu(BatchNorm2d(x))`` in one fused pass; see :class:`BatchNormReLU1d`.

    Shape:
        ``(N, C, H, W)``, contiguous or channels-last -> same.

    >>> layer = BatchNormReLU2d(3)
    >>> y = layer(torch.randn(4, 3, 8, 8))
    >>> bool((y >= 0).all()), sorted(layer.state_dict())[:2]
    (True, ['bias', 'num_batches_tracked'])
    """


class BatchNormReLU3d(_ReLUAfter, BatchNorm3d):
    """``relu(BatchNorm3d(x))`` in one fused pass; see :class:`BatchNormReLU1d`.

    >>> BatchNormReLU3d(2)(torch.randn(2, 2, 3, 3, 3)).shape
    torch.Size([2, 2, 3, 3, 3])
    """


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


def _fuse_children(module: nn.Module) -> None:
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            bn, act = module._modules[first], module._modules[second]
            if type(bn) in _FUSED_CLASS and type(act) is nn.ReLU:
                module._modules[first] = _fused_copy(bn)
                module._modules[second] = nn.Identity()
    for child in module.children():
        _fuse_children(child)


def fuse_bn_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` where each BN directly followed by a ReLU runs as one fused layer.

    "Directly followed" means the next module of an ``nn.Sequential`` (anywhere in the
    tree). The BN (``torch.nn`` or bnlab ``BatchNorm1d/2d/3d``, not their subclasses)
    becomes a ``BatchNormReLU*d`` with the same state and mode, the ReLU an
    ``nn.Identity``; names, indices and ``state_dict`` keys stay the same. Works in
    training and eval mode. The input model is not changed.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    >>> [type(m).__name__ for m in fuse_bn_relu(net)]
    ['Conv2d', 'BatchNormReLU2d', 'Identity']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_bn_relu expects an nn.Module; got {type(model).__name__}")
    fused = copy.deepcopy(model)
    _fuse_children(fused)
    return fused
