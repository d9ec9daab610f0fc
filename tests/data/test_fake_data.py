"""Synthetic data: valid real formats, deterministic by seed, balanced labels, and learnable
(a linear classifier trained for a few hundred steps beats chance by far).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnlab.data import Datasets, load_cifar10, load_mnist, one_hot
from bnlab.data.idx import read_idx_header
from bnlab.data.synthetic import write_fake_cifar10, write_fake_mnist


def _linear_probe_accuracy(ds: Datasets, steps: int = 40) -> float:
    # Plain gradient descent by hand: torch.optim's first use imports torch._dynamo (~4 s).
    torch.manual_seed(0)
    x, y = ds.train.flat(), ds.train.labels
    w = torch.zeros(x.shape[1], ds.num_classes, requires_grad=True)
    b = torch.zeros(ds.num_classes, requires_grad=True)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ w + b, y)
        gw, gb = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            w -= 0.5 * gw
            b -= 0.5 * gb
    with torch.no_grad():
        pred = (ds.test.flat() @ w + b).argmax(1)
    return float((pred == ds.test.labels).float().mean())


def test_fake_mnist_headers_and_split(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path, n_train=240, n_test=60, gzip=True)
    header = read_idx_header(d / "train-images-idx3-ubyte.gz")
    assert header.magic == 0x803 and header.shape == (240, 28, 28)
    assert read_idx_header(d / "t10k-labels-idx1-ubyte.gz").shape == (60,)
    ds = load_mnist(d)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (220, 20, 60)
    counts = torch.bincount(torch.cat([ds.train.labels, ds.validation.labels]), minlength=10)
    assert counts.tolist() == [24] * 10


def test_fake_mnist_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_fake_mnist(tmp_path / "a", n_train=24, n_test=12, seed=4)
    b = write_fake_mnist(tmp_path / "b", n_train=24, n_test=12, seed=4)
    c = write_fake_mnist(tmp_path / "c", n_train=24, n_test=12, seed=5)
    name = "train-images-idx3-ubyte"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_fake_mnist_is_learnable(tmp_path: Path) -> None:
    ds = load_mnist(write_fake_mnist(tmp_path, n_train=600, n_test=200))
    assert _linear_probe_accuracy(ds) > 0.9  # chance is 0.1


def test_fake_cifar_is_learnable(tmp_path: Path) -> None:
    ds = load_cifar10(write_fake_cifar10(tmp_path, "binary", n_per_batch=60, n_test=100))
    assert _linear_probe_accuracy(ds) > 0.8


def test_fake_generators_validate_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train and n_test must be positive"):
        write_fake_mnist(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="'python' or 'binary'"):
        write_fake_cifar10(tmp_path, "jpeg")  # type: ignore[arg-type]


def test_one_hot_helper() -> None:
    encoded = one_hot(torch.tensor([7, 2, 1]), 10)
    assert encoded.dtype == torch.float32 and encoded.shape == (3, 10)
    assert encoded.argmax(1).tolist() == [7, 2, 1] and encoded.sum().item() == 3.0
    with pytest.raises(ValueError, match=r"\[0, 10\), got range \[0, 10\]"):
        one_hot(torch.tensor([0, 10]), 10)
