"""Batch norm fused with the ReLU after it: ``BatchNormReLU1d/2d/3d``.

They compute ``relu(batch_norm(x))`` in one pass forward and one backward (the fused
kernel's ``relu=True``) instead of two each. ``bnlab.norm.tools.fuse.fuse_bn_relu`` puts
them into a model in place of (BN, ReLU) pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlab.norm.layers.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, as_torch_batch_norm
from bnlab.norm.ops import dispatch
from bnlab.norm.ops.library import fused_batch_norm

__all__ = ["BatchNormReLU1d", "BatchNormReLU2d", "BatchNormReLU3d"]


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
        if backend == "fused":  # one pass for both (validated like batch_norm)
            return fused_batch_norm(
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

    def __prepare_scriptable__(self) -> nn.Module:
        """TorchScript form: torch's batch norm (sharing this layer's tensors), then ReLU."""
        bn = as_torch_batch_norm(self, self._torch_class)  # type: ignore[arg-type, attr-defined]
        return nn.Sequential(bn, nn.ReLU())


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
