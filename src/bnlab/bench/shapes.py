"""The tensor shapes the batch-norm benchmark times: the seeds' own layers and large ones.

Each :class:`BenchShape` names where the shape comes from, so the table says why it is
there. ``seed_shapes()`` follows the five tutorials' networks at their batch sizes;
``large_shapes()`` are ImageNet-style activations where memory bandwidth is the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnlab.errors import UnknownNameError

__all__ = [
    "SHAPE_SETS",
    "BenchShape",
    "deep_cnn_shapes",
    "large_shapes",
    "quick_shapes",
    "seed_shapes",
    "shape_set",
]


@dataclass(frozen=True)
class BenchShape:
    """One benchmark input: ``shape`` ``(N, C, *)`` and where it comes from.

    >>> BenchShape("mlp-solver dense", (32, 32)).numel
    1024
    """

    source: str  # e.g. "deep-cnn conv2" or "large"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Values in the tensor."""
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        """``"64x64x56x56"``."""
        return "x".join(str(s) for s in self.shape)


def deep_cnn_shapes(batch: int = 64) -> list[BenchShape]:
    """The 19 conv activations and the dense layer of the seed-000 network at ``batch``.

    Conv ``i`` has ``4 i`` channels; TF 'same' padding halves (rounding up) the 28x28
    image at every ``i % 3 == 0``.
    """
    shapes = []
    size = 28
    for i in range(1, 20):
        if i % 3 == 0:
            size = math.ceil(size / 2)
        shapes.append(BenchShape(f"deep-cnn conv{i}", (batch, 4 * i, size, size)))
    shapes.append(BenchShape("deep-cnn dense", (batch, 100)))
    return shapes


def seed_shapes() -> list[BenchShape]:
    """Every batch-norm input of the five seed networks, at the seeds' batch sizes."""
    return [
        *deep_cnn_shapes(64),
        BenchShape("sigmoid-mlp hidden", (60, 100)),
        BenchShape("mlp-solver hidden", (32, 32)),
        BenchShape("image-fcn 512x512 RGB", (1, 3, 512, 512)),
        BenchShape("cifar-convnet conv1", (250, 16, 32, 32)),
        BenchShape("cifar-convnet conv2", (250, 32, 16, 16)),
        BenchShape("cifar-convnet conv3", (250, 64, 8, 8)),
    ]


def large_shapes() -> list[BenchShape]:
    """Large activations where the memory bus, not the arithmetic, sets the time."""
    return [
        BenchShape("large (ResNet conv2 batch 64)", (64, 64, 56, 56)),
        BenchShape("large (ResNet conv4 batch 128)", (128, 256, 14, 14)),
        BenchShape("large dense", (256, 1024)),
    ]


def quick_shapes() -> list[BenchShape]:
    """Two tiny shapes for a smoke run (``bnlab bench --quick``)."""
    return [BenchShape("quick conv", (8, 8, 12, 12)), BenchShape("quick dense", (16, 32))]


SHAPE_SETS = {
    "all": lambda: [*seed_shapes(), *large_shapes()],
    "seeds": seed_shapes,
    "large": large_shapes,
    "deep-cnn": deep_cnn_shapes,
    "quick": quick_shapes,
}


def shape_set(name: str) -> list[BenchShape]:
    """The shapes of a named set (a key of :data:`SHAPE_SETS`).

    Raises:
        UnknownNameError: ``name`` is not a set.
    """
    if name not in SHAPE_SETS:
        raise UnknownNameError("shape set", name, tuple(SHAPE_SETS))
    return list(SHAPE_SETS[name]())
