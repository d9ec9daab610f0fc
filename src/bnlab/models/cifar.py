"""The seed-004 Keras ConvNet for CIFAR-10, with batch norm before or after the activation,
and a Keras-style model summary (per-layer output shapes and parameter counts, trainable
and not).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bnlab.errors import UnknownNameError
from bnlab.models.init import tf_init_
from bnlab.norm.layers.registry import get_norm

__all__ = [
    "BN_PLACEMENTS",
    "LayerSummary",
    "NHWCFlatten",
    "cifar_convnet",
    "format_summary",
    "summarize_model",
]

#: Where batch norm sits in each conv block: ``"before"`` the ELU (conv, BN, activation,
#: pool: the seed's first model) or ``"after"`` it (conv with ELU, BN, pool: the second).
BN_PLACEMENTS = ("before", "after")


class NHWCFlatten(nn.Module):
    """Flatten ``(N, C, H, W)`` in Keras's channels-last order (``(N, H * W * C)``).

    The dense layer after it then sees the features in the order Keras's does.

    >>> NHWCFlatten()(torch.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]]
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def cifar_convnet(
    placement: str = "before",
    *,
    filters: Sequence[int] = (16, 32, 64),
    dense_units: int = 512,
    num_classes: int = 10,
    in_channels: int = 3,
    dropout: float = 0.3,
    norm: str = "bn",
    bn_eps: float = 1e-3,
    bn_decay: float = 0.99,
) -> nn.Sequential:
    """The seed's ``tf.keras.Sequential`` model, layer for layer, with Keras's layer names.

    Per block ``i``: ``conv2d`` (3x3, 'same', no bias), then ``batch_normalization`` and
    ``activation`` (ELU) in the order ``placement`` gives, then ``max_pooling2d`` (2x2,
    stride 2). Then ``dropout`` (0.3), ``flatten`` (channels-last order), ``dense`` (512,
    ELU), ``dropout_1``, ``dense_1`` (10 logits; the softmax is in the loss). Kernels
    glorot-uniform, biases zero, BN epsilon 1e-3 and decay 0.99: Keras's defaults.

    Args:
        placement: ``"before"`` or ``"after"`` (:data:`BN_PLACEMENTS`).
        filters: conv widths (16, 32, 64).
        dense_units: the hidden dense width (512).
        num_classes, in_channels: 10 and 3 for CIFAR-10.
        dropout: the rate of both dropout layers.
        norm: a :func:`bnlab.norm.get_norm` name (``"bn"``, ``"torch-bn"``, ``"none"``).
        bn_eps, bn_decay: Keras BatchNormalization's epsilon and momentum (TF decay).

    Returns:
        ``nn.Sequential`` whose children are named as Keras names the seed's layers
        (``conv2d``, ``batch_normalization``, ``activation``, ``max_pooling2d``,
        ``conv2d_1``, ...). Initialized from the current torch RNG.

    Raises:
        UnknownNameError: an unknown ``placement`` or ``norm``.
        ValueError: a non-positive size, or a dropout rate outside [0, 1).

    Shape:
        ``(N, 3, 32, 32)`` -> logits ``(N, 10)``.

    >>> net = cifar_convnet("before")
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters())
    553626
    """
    if placement not in BN_PLACEMENTS:
        raise UnknownNameError("batch-norm placement", placement, BN_PLACEMENTS)
    if not filters or any(f < 1 for f in filters) or dense_units < 1 or num_classes < 1:
        raise ValueError(
            f"filters, dense_units and num_classes must be positive; got filters={tuple(filters)}, "
            f"dense_units={dense_units}, num_classes={num_classes}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
    counts: dict[str, int] = {}

    def name(kind: str) -> str:
        # Keras names the first layer of a kind "conv2d", the next "conv2d_1", ...
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        return kind if k == 0 else f"{kind}_{k}"

    layers: list[tuple[str, nn.Module]] = []
    channels = in_channels
    for width in filters:
        layers.append((name("conv2d"), nn.Conv2d(channels, width, 3, padding=1, bias=False)))
        bn = (name("batch_normalization"), get_norm(norm, width, eps=bn_eps, decay=bn_decay))
        act = (name("activation"), nn.ELU())
        layers.extend([bn, act] if placement == "before" else [act, bn])
        # 'same' pooling of an even size is plain 2x2/2 pooling.
        layers.append((name("max_pooling2d"), nn.MaxPool2d(2, 2, ceil_mode=True)))
        channels = width
    side = 32 // 2 ** len(filters)
    layers += [
        (name("dropout"), nn.Dropout(dropout)),
        (name("flatten"), NHWCFlatten()),
        (name("dense"), nn.Linear(channels * side * side, dense_units)),
        (name("activation"), nn.ELU()),
        (name("dropout"), nn.Dropout(dropout)),
        (name("dense"), nn.Linear(dense_units, num_classes)),
    ]
    net = nn.Sequential(OrderedDict(layers))
    tf_init_(net)  # glorot-uniform kernels, zero biases (Keras defaults)
    return net


@dataclass(frozen=True)
class LayerSummary:
    """One row of a Keras-style summary.

    Attributes:
        name: the layer's name (its attribute name in the model).
        kind: the layer's class name.
        output_shape: the output shape with ``None`` for the batch dim.
        trainable: number of trainable parameter values.
        non_trainable: number of non-trainable values: frozen parameters plus floating-point
            buffers (BN's moving mean and variance; integer counters such as
            ``num_batches_tracked`` are not weights and are not counted, as in Keras).
    """

    name: str
    kind: str
    output_shape: tuple[int | None, ...]
    trainable: int
    non_trainable: int

    @property
    def params(self) -> int:
        """``trainable + non_trainable``: Keras's ``Param #``."""
        return self.trainable + self.non_trainable


def _counts(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    return trainable, frozen + buffers


def summarize_model(model: nn.Sequential, input_shape: Sequence[int]) -> list[LayerSummary]:
    """Run one zero example of ``input_shape`` through ``model`` and describe every child.

    The model is run in eval mode (no population statistics change) without gradients,
    and its mode is restored.

    Args:
        model: a sequential model (each child is a layer, as in Keras).
        input_shape: one example's shape, without the batch dim (``(3, 32, 32)``).

    Returns:
        One :class:`LayerSummary` per child, in order.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential``.

    >>> rows = summarize_model(cifar_convnet(), (3, 32, 32))
    >>> rows[1].name, rows[1].output_shape, rows[1].trainable, rows[1].non_trainable
    ('batch_normalization', (None, 16, 32, 32), 32, 32)
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"summarize_model needs an nn.Sequential; got {type(model).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    rows: list[LayerSummary] = []
    try:
        x = torch.zeros(1, *input_shape)
        with torch.no_grad():
            for name, layer in model.named_children():
                x = layer(x)
                trainable, non_trainable = _counts(layer)
                shape = (None, *(int(d) for d in x.shape[1:]))
                rows.append(
                    LayerSummary(name, type(layer).__name__, shape, trainable, non_trainable)
                )
    finally:
        for module, flag in flags:
            module.training = flag
    return rows


def format_summary(rows: Sequence[LayerSummary], *, title: str = "") -> str:
    """Keras's ``model.summary()`` text for ``rows``, plus a trainable / non-trainable split.

    >>> text = format_summary(summarize_model(cifar_convnet(), (3, 32, 32)))
    >>> text.splitlines()[-3:]
    ['Total params: 553,850', 'Trainable params: 553,626', 'Non-trainable params: 224']
    """
    rule, double = "_" * 91, "=" * 91
    lines = [title] if title else []
    lines += [
        rule,
        f"{'Layer (type)':<38}{'Output Shape':<22}{'Param #':>10}{'Trainable':>11}{'Non-tr.':>10}",
        double,
    ]
    for i, row in enumerate(rows):
        label = f"{row.name} ({row.kind})"
        shape = "(" + ", ".join("None" if d is None else str(d) for d in row.output_shape) + ")"
        lines.append(
            f"{label:<38}{shape:<22}{row.params:>10,}{row.trainable:>11,}{row.non_trainable:>10,}"
        )
        lines.append(double if i == len(rows) - 1 else rule)
    trainable = sum(r.trainable for r in rows)
    non_trainable = sum(r.non_trainable for r in rows)
    lines += [
        f"Total params: {trainable + non_trainable:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {non_trainable:,}",
    ]
    return "\n".join(lines)
