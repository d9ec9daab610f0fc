"""The state the seeds' hand-written batch norm declares, in one place.

Seeds 000, 001 and 003 each build batch norm from explicit variables: a trainable scale
``gamma`` (init 1) and offset ``beta`` (init 0), and population statistics ``pop_mean``
(init 0) and ``pop_variance`` (init 1) that are NOT trainable (``trainable=False``) and
move toward each training batch's statistics with a TF-style ``decay``. The models'
low-level layers (``LowLevelBatchNorm``, ``BatchNormWrapper``, ``ChannelsLastBatchNorm``)
differ only in their forward, so they share this base.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnlab.norm.ops.functional import momentum_from_decay

__all__ = ["PopulationBatchNorm"]


class PopulationBatchNorm(nn.Module):
    """``gamma``/``beta`` parameters and ``pop_mean``/``pop_variance`` buffers; no forward.

    Args:
        num_features: channels C.
        eps: added to the variance.
        decay: weight of the old population value (TF style); ``self.momentum`` is the
            PyTorch-style equivalent (``bnlab.norm.ops.functional.momentum_from_decay``, which
            also validates it).

    Raises:
        ValueError: ``num_features < 1`` or ``decay`` outside ``[0, 1]``.

    >>> bn = PopulationBatchNorm(3, eps=1e-3, decay=0.99)
    >>> [n for n, _ in bn.named_parameters()], [n for n, _ in bn.named_buffers()]
    (['gamma', 'beta'], ['pop_mean', 'pop_variance'])
    >>> round(bn.momentum, 2)
    0.01
    """

    pop_mean: Tensor
    pop_variance: Tensor

    def __init__(self, num_features: int, eps: float, decay: float) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1; got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.decay = decay
        self.momentum = momentum_from_decay(decay)  # validates decay; the one conversion
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        # Buffers, not parameters: the optimizer never sees them (trainable=False in TF).
        self.register_buffer("pop_mean", torch.zeros(num_features))
        self.register_buffer("pop_variance", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, decay={self.decay}"
