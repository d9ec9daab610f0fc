"""Fixtures of the fault-injection suite: an isolated environment, synthetic MNIST, and
``cli`` (run ``bnlab`` in-process, capture exit status and streams)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fault_helpers import Outcome

from bnlab.cli.main import main
from bnlab.data import write_fake_mnist


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reads or writes the user's cache or data directory; thread count restored."""
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BNLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("BNLAB_DEBUG", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MNIST (240 training, 40 test images)."""
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=240, n_test=40, seed=1)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """``cli(*argv) -> Outcome``: run ``bnlab`` in-process, capture its streams."""

    def call(*argv: str) -> Outcome:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return call
