"""The seed-000 network: 19 conv layers, a dense layer of 100 and 10 logits, on MNIST.

Conv layer ``i`` (1..19) has ``4 i`` filters of 3x3, TF ``'same'`` padding and stride 2
when ``i % 3 == 0``. Batch norm is placed as the seed shows it: through a module
(``tf.layers``), through explicit tensors and the functional API (``tf.nn``), or in one of
three alternate positions around the bias and the ReLU.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch  # noqa: F401  (the docstring examples use it)
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.errors import UnknownNameError
from bnlab.models.init import INITIALIZERS, tf_init_, truncated_normal_
from bnlab.models.seed_norm import PopulationBatchNorm
from bnlab.norm.layers.registry import get_norm
from bnlab.norm.ops.functional import batch_stats, normalize, update_running_stats

__all__ = ["PLACEMENTS", "Conv2dSame", "DeepCNN", "LowLevelBatchNorm", "tf_same_padding"]

#: Where batch norm sits in each conv layer, as the seed's four ``conv_layer`` versions:
#: name -> (conv has a bias, order of the norm and the ReLU after the conv).
PLACEMENTS: dict[str, tuple[bool, tuple[str, str]]] = {
    "bn-relu": (False, ("norm", "act")),  # the seed's main version: no bias, BN, ReLU
    "bias-bn-relu": (True, ("norm", "act")),  # alternate 1: bias kept, BN before ReLU
    "bias-relu-bn": (True, ("act", "norm")),  # alternate 2: bias, ReLU, then BN
    "relu-bn": (False, ("act", "norm")),  # alternate 3: no bias, ReLU, then BN
}


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TF's ``'same'`` padding ``(before, after)`` along one dimension.

    ``out = ceil(size / stride)``, ``total = max((out - 1) * stride + kernel - size, 0)``,
    ``before = total // 2``: TF puts the odd pixel after, where PyTorch's symmetric
    ``padding=1`` would shift a stride-2 grid by one pixel.

    >>> tf_same_padding(28, 3, 2), tf_same_padding(28, 3, 1), tf_same_padding(7, 3, 2)
    ((0, 1), (1, 1), (1, 1))
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``'same'`` padding (asymmetric when the total is odd).

    Shape:
        ``(N, C_in, H, W)`` -> ``(N, C_out, ceil(H / stride), ceil(W / stride))``.

    >>> Conv2dSame(1, 4, 3, stride=2)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 4, 14, 14])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias
        )

    def forward(self, input: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = tf_same_padding(input.shape[-2], kh, sh)
        left, right = tf_same_padding(input.shape[-1], kw, sw)
        if top == bottom and left == right:
            # Symmetric: let the convolution pad (no extra copy of the input).
            return F.conv2d(input, self.weight, self.bias, self.stride, (top, left))
        return F.conv2d(
            F.pad(input, (left, right, top, bottom)), self.weight, self.bias, self.stride
        )

    def extra_repr(self) -> str:
        return super().extra_repr().replace("padding=(0, 0)", "padding='same' (TF)")


class LowLevelBatchNorm(PopulationBatchNorm):
    """Batch norm written the seed's ``tf.nn`` way: explicit gamma, beta and population tensors.

    Training: ``mean, var = moments(x)`` over every dim but the channels (biased variance,
    as ``tf.nn.moments``); ``pop = decay * pop + (1 - decay) * batch`` for both statistics
    (the seed updates ``pop_variance`` with the biased batch variance; the module API uses
    the unbiased one); ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.
    Inference: the same with ``pop_mean`` and ``pop_variance``.

    Args:
        num_features: channels C.
        eps: added to the variance (the seed's 1e-3).
        decay: weight of the old population value (the seed's 0.99).
        channel_dim: the channel dimension (1 for NCHW, -1 for channels-last tensors).

    Shape:
        ``(N, C, ...)`` (channels at ``channel_dim``) -> same.

    >>> bn = LowLevelBatchNorm(3)
    >>> y = bn(torch.randn(8, 3, 4, 4) * 5 + 2)
    >>> bool(y.mean(dim=(0, 2, 3)).abs().max() < 1e-5), [n for n, _ in bn.named_parameters()]
    (True, ['gamma', 'beta'])
    """

    def __init__(
        self, num_features: int, eps: float = 1e-3, decay: float = 0.99, channel_dim: int = 1
    ):
        super().__init__(num_features, eps, decay)
        self.channel_dim = channel_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[self.channel_dim] != self.num_features:
            raise ValueError(
                f"LowLevelBatchNorm({self.num_features}) expected {self.num_features} channels in "
                f"dim {self.channel_dim}; got shape {tuple(x.shape)}"
            )
        if self.training:
            mean, var = batch_stats(x, self.channel_dim)
            update_running_stats(self.pop_mean, self.pop_variance, mean, var, self.momentum)
        else:
            mean, var = self.pop_mean, self.pop_variance
        return normalize(x, mean, var, self.gamma, self.beta, self.eps, self.channel_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channel_dim={self.channel_dim}"


class DeepCNN(nn.Module):
    """The seed-000 network, with the normalization and its placement as parameters.

    ``features``: conv layers ``i = 1..num_conv_layers`` (``filters_per_depth * i`` filters,
    3x3, TF 'same', stride 2 when ``i % 3 == 0``), each a conv followed by ReLU and, with a
    norm, batch norm in the order ``placement`` gives; flattened in TF's NHWC order;
    ``hidden``: dense ``dense_units`` (no bias, BN, ReLU with a norm; bias and ReLU without);
    ``logits``: dense ``num_classes``. Kernels glorot-uniform (or truncated normal
    ``conv_init_std`` for the convs), biases zero, as ``tf.layers``.

    Args:
        norm: a :func:`bnlab.norm.get_norm` name (``"none"``, ``"bn"``, ``"torch-bn"``, ...).
        placement: a key of :data:`PLACEMENTS` (ignored when ``norm`` is ``"none"``).
        lowlevel: use :class:`LowLevelBatchNorm` (the seed's ``tf.nn`` version) instead of
            the ``norm`` module; requires ``norm="bn"``.
        bn_eps, bn_decay: TF's batch-norm epsilon and decay (momentum ``1 - decay``).
        conv_init: ``"glorot-uniform"`` or ``"truncated-normal"``; conv_init_std: its std.

    Raises:
        UnknownNameError: an unknown ``norm`` or ``placement``.
        ValueError: ``lowlevel`` with a norm other than ``"bn"``, or non-positive sizes.

    Shape:
        ``(N, in_channels, H, W)`` -> ``(N, num_classes)``.

    >>> net = DeepCNN(norm="bn")
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_conv_layers: int = 19,
        filters_per_depth: int = 4,
        dense_units: int = 100,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        norm: str = "none",
        placement: str = "bn-relu",
        lowlevel: bool = False,
        bn_eps: float = 1e-3,
        bn_decay: float = 0.99,
        conv_init: str = "glorot-uniform",
        conv_init_std: float = 0.05,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_conv_layers", num_conv_layers),
            ("filters_per_depth", filters_per_depth),
            ("dense_units", dense_units),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if placement not in PLACEMENTS:
            raise UnknownNameError("placement", placement, tuple(PLACEMENTS))
        if lowlevel and norm != "bn":
            raise ValueError(
                f"lowlevel=True builds its own batch norm and needs norm='bn'; got norm={norm!r}"
            )
        if conv_init not in INITIALIZERS:
            raise UnknownNameError("initializer", conv_init, INITIALIZERS)
        normalized = norm != "none"
        get_norm(norm, 1)  # an unknown name fails here with the list of valid ones

        def make_norm(channels: int, spatial_dims: int) -> nn.Module:
            if lowlevel:
                return LowLevelBatchNorm(channels, eps=bn_eps, decay=bn_decay)
            return get_norm(norm, channels, spatial_dims=spatial_dims, eps=bn_eps, decay=bn_decay)

        layers: list[tuple[str, nn.Module]] = []
        channels, size = in_channels, image_size
        conv_bias, order = PLACEMENTS[placement] if normalized else (True, ("act",))
        for i in range(1, num_conv_layers + 1):
            stride = 2 if i % 3 == 0 else 1
            out = filters_per_depth * i
            parts: list[tuple[str, nn.Module]] = [
                ("conv", Conv2dSame(channels, out, 3, stride, bias=conv_bias))
            ]
            for op in order:
                parts.append(("norm", make_norm(out, 2)) if op == "norm" else ("act", nn.ReLU()))
            layers.append((f"conv{i}", nn.Sequential(OrderedDict(parts))))
            channels, size = out, math.ceil(size / stride)
        self.features = nn.Sequential(OrderedDict(layers))
        self.flat_features = channels * size * size
        if normalized:
            self.hidden = nn.Sequential(
                OrderedDict(
                    dense=nn.Linear(self.flat_features, dense_units, bias=False),
                    norm=make_norm(dense_units, 0),
                    act=nn.ReLU(),
                )
            )
        else:
            self.hidden = nn.Sequential(
                OrderedDict(dense=nn.Linear(self.flat_features, dense_units), act=nn.ReLU())
            )
        self.logits = nn.Linear(dense_units, num_classes)

        tf_init_(self)  # glorot-uniform kernels, zero biases (tf.layers defaults)
        if conv_init == "truncated-normal":
            for layer in self.features.modules():
                if isinstance(layer, Conv2dSame):
                    truncated_normal_(layer.weight, conv_init_std)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        # TF flattens NHWC tensors; keep its order so the dense weights mean the same.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.logits(self.hidden(x))
