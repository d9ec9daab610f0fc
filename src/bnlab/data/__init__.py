"""Data: IDX / CIFAR-10 / image readers, offline-first sources, integrity checks and
in-memory batching. See ``docs/data.md`` for sources, cache layout and conventions.

>>> from bnlab.data import load_mnist, TrainBatches  # doctest: +SKIP
>>> ds = load_mnist()  # doctest: +SKIP
>>> x, y = TrainBatches(ds.train, 64, seed=0).next_batch()  # doctest: +SKIP
"""

from __future__ import annotations

from bnlab.data.batching import EpochSampler, EvalBatches, TrainBatches
from bnlab.data.cache import cache_root
from bnlab.data.cifar import CIFAR10_CLASSES, CIFAR10_URL, load_cifar10
from bnlab.data.datasets import Datasets, Split, flat_view, mnist_validation_size, one_hot
from bnlab.data.errors import (
    CacheNotWritableError,
    ChecksumError,
    CorruptFileError,
    CountMismatchError,
    DataError,
    DatasetNotFoundError,
    FetchError,
    MissingFilesError,
    NpmError,
)
from bnlab.data.idx import read_idx, write_idx
from bnlab.data.images import SKIMAGE_NAMES, load_image
from bnlab.data.mnist import load_mnist
from bnlab.data.synthetic import write_fake_cifar10, write_fake_mnist

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "SKIMAGE_NAMES",
    "CacheNotWritableError",
    "ChecksumError",
    "CorruptFileError",
    "CountMismatchError",
    "DataError",
    "DatasetNotFoundError",
    "Datasets",
    "EpochSampler",
    "EvalBatches",
    "FetchError",
    "MissingFilesError",
    "NpmError",
    "Split",
    "TrainBatches",
    "cache_root",
    "flat_view",
    "load_cifar10",
    "load_image",
    "load_mnist",
    "mnist_validation_size",
    "one_hot",
    "read_idx",
    "write_fake_cifar10",
    "write_fake_mnist",
    "write_idx",
]
