"""The seed-003 network: a 2-layer fully convolutional net on channels-last RGB images whose
batch norm is the low-level kind (explicit gamma/beta, statistics over N, H, W per channel,
population statistics that are buffers updated on every training call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.init import glorot_uniform_
from bnlab.models.seed_norm import PopulationBatchNorm
from bnlab.norm.ops.functional import batch_norm

__all__ = ["ChannelsLastBatchNorm", "ImageFCN"]


class ChannelsLastBatchNorm(PopulationBatchNorm):
    """Low-level batch norm on channels-last ``(N, H, W, C)`` tensors, as seed 003 builds it.

    The module owns what the seed declares by hand: ``gamma`` (scale, init 1) and ``beta``
    (offset, init 0) are trainable parameters; ``pop_mean`` (init 0) and ``pop_variance``
    (init 1) are buffers, NOT parameters, so no optimizer ever sees them (the seed's
    ``trainable=False``). Every call in training mode normalizes with the batch's mean and
    variance over N, H and W per channel (``tf.nn.moments(x, [0, 1, 2])``) and moves the
    population statistics toward them, ``pop = decay * pop + (1 - decay) * batch`` (the
    seed's ``control_dependencies``); inference normalizes with the population statistics:
    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

    The arithmetic is :func:`bnlab.norm.ops.functional.batch_norm` on the NCHW view of the
    tensor (a permute, no copy), so the fused CPU kernel does it in two passes. That update
    uses the unbiased batch variance; with ``m = N * H * W`` values per channel (262,144 for
    one 512x512 image) it differs from the seed's biased one by a factor ``m / (m - 1)``.

    Args:
        num_features: channels C (the last dim).
        eps: added to the variance (the seed's example value 1e-5).
        decay: weight of the old population value (TF style).

    Shape:
        ``(N, H, W, C)`` -> ``(N, H, W, C)``.

    >>> bn = ChannelsLastBatchNorm(3, decay=0.0)
    >>> x = torch.randn(2, 4, 4, 3) * 5 + 2
    >>> y = bn(x)
    >>> bool(y.mean(dim=(0, 1, 2)).abs().max() < 1e-4)
    True
    >>> torch.allclose(bn.pop_mean, x.mean(dim=(0, 1, 2)))
    True
    >>> [name for name, _ in bn.named_parameters()]
    ['gamma', 'beta']
    """

    def __init__(self, num_features: int, eps: float = 1e-5, decay: float = 0.9) -> None:
        super().__init__(num_features, eps, decay)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"ChannelsLastBatchNorm({self.num_features}) expects (N, H, W, "
                f"{self.num_features}) input; got shape {tuple(x.shape)}"
            )
        y = batch_norm(
            x.permute(0, 3, 1, 2),  # the NCHW view: channels in dim 1, same memory
            self.pop_mean,
            self.pop_variance,
            self.gamma,
            self.beta,
            self.training,
            self.momentum,
            self.eps,
        )
        return y.permute(0, 2, 3, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channels-last"


class ImageFCN(nn.Module):
    """Two 3x3 convolutions with channels-last batch norm; the output has the input's shape.

    ``h = ReLU(BN1(conv1(x)))``, ``r = conv2(h)`` (or ``BN2(conv2(h))`` with
    ``output_norm``; every BN is optional), output ``x + r``
    with ``residual`` (the net learns a correction of its input, e.g. the negative of the
    noise for denoising) or ``r`` without. Tensors are channels-last ``(N, H, W, C)`` as in
    the seed (TF's NHWC); each convolution views them as NCHW (a permute, no copy: PyTorch
    runs the convolution on the channels-last memory format). Batch norm is
    :class:`ChannelsLastBatchNorm`: mean and variance over N, H and W per channel, gamma and
    beta trainable, ``pop_mean``/``pop_variance`` buffers moved toward every training
    batch's statistics (``decay``) and used in inference. Kernels glorot-uniform, biases zero
    (``tf.get_variable``'s defaults).

    Args:
        in_channels: C of the input and the output (3 for RGB).
        hidden_channels: channels after the first convolution.
        kernel_size: odd kernel size (TF 'same' padding is symmetric for odd kernels and
            stride 1).
        batch_norm: put BN after the first convolution.
        output_norm: also after the second (the correction is then normalized per channel
            and rescaled by a learned gamma, which starts at 1: a full-strength correction).
        residual: add the input to the output.
        zero_init_output: start the second convolution's kernel at 0 (with ``residual``,
            the untrained net returns its input) instead of glorot-uniform.
        bn_eps: BN epsilon; bn_decay: weight of the old population value.

    Raises:
        ValueError: an even kernel size or non-positive channel counts.

    Shape:
        ``(N, H, W, C)`` -> ``(N, H, W, C)``.

    >>> net = ImageFCN()
    >>> net(torch.rand(2, 32, 32, 3)).shape
    torch.Size([2, 32, 32, 3])
    >>> sorted(n for n, _ in net.named_buffers())
    ['bn1.pop_mean', 'bn1.pop_variance']
    """

    def __init__(
        self,
        in_channels: int = 3,
        hidden_channels: int = 16,
        kernel_size: int = 3,
        *,
        batch_norm: bool = True,
        output_norm: bool = False,
        residual: bool = True,
        zero_init_output: bool = False,
        bn_eps: float = 1e-5,
        bn_decay: float = 0.9,
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(
                f"channel counts must be >= 1; got in_channels={in_channels}, "
                f"hidden_channels={hidden_channels}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive; got {kernel_size}")
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv2d(hidden_channels, in_channels, kernel_size, padding=kernel_size // 2)
        self.bn1: nn.Module = (
            ChannelsLastBatchNorm(hidden_channels, eps=bn_eps, decay=bn_decay)
            if batch_norm
            else nn.Identity()
        )
        self.bn2: nn.Module = (
            ChannelsLastBatchNorm(in_channels, eps=bn_eps, decay=bn_decay)
            if batch_norm and output_norm
            else nn.Identity()
        )
        for conv in (self.conv1, self.conv2):
            glorot_uniform_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if zero_init_output:
            # A residual net whose last layer starts at 0 starts as the identity.
            nn.init.zeros_(self.conv2.weight)

    @staticmethod
    def _conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
        # (N, H, W, C) -> NCHW view -> conv -> back to an (N, H, W, C) view.
        y = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=conv.padding)
        return y.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.conv1.in_channels:
            raise ValueError(
                f"ImageFCN expects channels-last (N, H, W, {self.conv1.in_channels}) input; "
                f"got shape {tuple(x.shape)}"
            )
        h = torch.relu(self.bn1(self._conv_nhwc(self.conv1, x)))
        r = self.bn2(self._conv_nhwc(self.conv2, h))
        return x + r if self.residual else r

    def extra_repr(self) -> str:
        return f"channels-last (N, H, W, C), residual={self.residual}"
