"""In-memory data sets: :class:`Split` (images and labels as tensors) and :class:`Datasets`
(train / validation / test), plus the one-hot and flat-view helpers the seeds need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

# TensorFlow's read_data_sets holds out the first 5,000 of MNIST's 60,000 training images.
TF_VALIDATION_SIZE = 5000
TF_VALIDATION_FRACTION = 12  # 60,000 / 5,000


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set, held in memory.

    Attributes:
        images: float32 tensor, shape ``(N, C, H, W)``.
        labels: int64 tensor of class indices, shape ``(N,)``.

    Raises:
        TypeError: wrong dtypes.
        ValueError: wrong ranks, or ``N`` differs between images and labels.

    >>> s = Split(torch.zeros(4, 1, 28, 28), torch.tensor([7, 2, 1, 0]))
    >>> len(s), s.flat().shape
    (4, torch.Size([4, 784]))
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32:
            raise TypeError(f"Split.images must be float32, got {self.images.dtype}")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"Split.labels must be int64, got {self.labels.dtype}")
        if self.images.dim() != 4:
            raise ValueError(
                f"Split.images must be (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"Split.labels must be ({self.images.shape[0]},) to match the images, "
                f"got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def flat(self) -> Tensor:
        """The images as ``(N, C*H*W)`` (a view, no copy): MNIST's flat 784 vectors."""
        return flat_view(self.images)

    def __getitem__(self, index: slice | Tensor) -> Split:
        """A sub-split: ``split[:100]`` or ``split[index_tensor]``."""
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True, eq=False)
class Datasets:
    """A data set's three splits plus its class names and where it was read from.

    Attributes:
        train, validation, test: the splits (``validation`` may be empty, e.g. CIFAR-10 by
            default, whose seed validates on the test set).
        name: ``"mnist"``, ``"cifar10"`` or another MNIST-format data set's directory name.
        classes: class names, index = label.
        source: the directory or archive the data came from (for logs and run records).
        provenance: the files read, their digests and whether they are the published data
            (see :mod:`bnlab.data.provenance`); empty when built in memory.
    """

    train: Split
    validation: Split
    test: Split
    name: str
    classes: tuple[str, ...]
    source: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def summary(self) -> str:
        """One line: name, split sizes, image shape and source."""
        c, h, w = self.train.image_shape
        return (
            f"{self.name}: train {len(self.train)}, validation {len(self.validation)}, "
            f"test {len(self.test)}, images {c}x{h}x{w}, {self.num_classes} classes, "
            f"from {self.source}"
        )


def check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    """Refuse labels outside ``[0, num_classes)``.

    Raises:
        CorruptFileError: naming ``where``, the number of bad labels and the first one.
    """
    from bnlab.data.errors import CorruptFileError

    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if bad.numel():
        first = int(bad[0])
        raise CorruptFileError(
            where,
            "labels",
            f"class indices 0..{num_classes - 1} ({num_classes} classes)",
            f"{bad.numel()} outside that range, the first {int(labels[first])} at index "
            f"{first}; replace the file with an intact copy",
        )


def check_not_empty(splits: Mapping[str, int], where: str) -> None:
    """Refuse empty splits (``{"train": n, ...}``): a model cannot train or be measured on
    zero examples, and the failure would otherwise come later as a bare ``max()`` error.

    Raises:
        CorruptFileError: naming ``where`` and the empty splits.
    """
    from bnlab.data.errors import CorruptFileError

    empty = [name for name, n in splits.items() if n == 0]
    if empty:
        sizes = ", ".join(f"{name} {n}" for name, n in splits.items())
        raise CorruptFileError(
            where,
            "split sizes",
            "at least one example in every split",
            f"{sizes}; use files with more examples",
        )


def flat_view(images: Tensor) -> Tensor:
    """Return ``images`` reshaped to ``(N, -1)`` (a view when contiguous)."""
    if images.dim() < 2:
        raise ValueError(f"expected images of shape (N, ...), got shape {tuple(images.shape)}")
    return images.reshape(images.shape[0], -1)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot float32 encoding of class indices: ``out[i, labels[i]] = 1``.

    Args:
        labels: int tensor of shape ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: number of columns.

    Returns:
        float32 tensor of shape ``(N, num_classes)``.

    Raises:
        ValueError: a label outside ``[0, num_classes)`` or labels not of rank 1.

    >>> one_hot(torch.tensor([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if labels.dim() != 1:
        raise ValueError(f"expected labels of shape (N,), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)


def mnist_validation_size(n_train: int) -> int:
    """Validation size for an MNIST-format training file of ``n_train`` images.

    TensorFlow's convention is 5,000 of 60,000, i.e. one twelfth. The same fraction is used
    for smaller files (synthetic or subset data) and capped at 5,000 for larger ones:
    ``min(5000, n_train // 12)``. So the real MNIST gives 5,000 / 55,000 and a 600-image fake
    gives 50 / 550.
    """
    return min(TF_VALIDATION_SIZE, n_train // TF_VALIDATION_FRACTION)


def uint8_to_float_nchw(images: np.ndarray) -> Tensor:
    """uint8 ``(N, H, W)`` or ``(N, C, H, W)`` array -> float32 ``(N, C, H, W)`` in ``[0, 1]``."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    if images.ndim != 4:
        raise ValueError(f"expected (N, H, W) or (N, C, H, W) images, got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)


def labels_to_int64(labels: np.ndarray) -> Tensor:
    """Integer labels array -> int64 tensor of shape ``(N,)``."""
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64).reshape(-1))
