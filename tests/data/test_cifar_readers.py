"""CIFAR-10 readers on small files written in both real formats (python pickle, binary), as
directories and archives, plus the download path (injected fetch) and every bad-input case.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from bnlab.data import CIFAR10_CLASSES, load_cifar10
from bnlab.data.cifar import (
    PY_ARCHIVE,
    RECORD_BYTES,
    find_cifar10,
    parse_binary_batch,
    parse_python_batch,
)
from bnlab.data.errors import (
    CacheNotWritableError,
    ChecksumError,
    CorruptFileError,
    CountMismatchError,
    DatasetNotFoundError,
    FetchError,
    MissingFilesError,
)
from bnlab.data.synthetic import write_fake_cifar10


def _python_batch(images: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({"data": images, "labels": labels, "batch_label": "b"}, protocol=2)


def test_python_batch_pixel_layout() -> None:
    # One image whose red plane is 1, green 2, blue 3, with a marked pixel at (row 0, col 1).
    flat = np.concatenate([np.full(1024, v, np.uint8) for v in (1, 2, 3)])
    flat[1] = 200
    images, labels = parse_python_batch(_python_batch(flat[None], [6]), "mem")
    assert images.shape == (1, 3, 32, 32) and labels.tolist() == [6]
    assert images[0, :, 5, 5].tolist() == [1, 2, 3]
    assert images[0, 0, 0, 1] == 200


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2's ``str`` (BINSTRING), as the original batches were."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        op = (
            pickle.SHORT_BINSTRING + bytes([n])
            if n < 256
            else pickle.BINSTRING + struct.pack("<i", n)
        )
        self.write(op + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def test_python2_style_pickle_loads() -> None:
    # The published batches were written by Python 2 with numpy 1.x: no unicode strings and
    # numpy.core.multiarray._reconstruct. Emulate that byte stream and read it back.
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    batch = {"batch_label": "training batch 1 of 5", "labels": [3, 7], "data": data}
    _Py2Pickler(buf, protocol=2).dump(batch)
    raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    images, labels = parse_python_batch(raw, "py2")
    assert labels.tolist() == [3, 7]
    np.testing.assert_array_equal(images.reshape(2, -1), data)


def test_binary_batch_pixel_layout() -> None:
    record = np.zeros(RECORD_BYTES, np.uint8)
    record[0] = 9
    record[1 + 1024 + 32 * 2 + 3] = 77  # green plane, row 2, column 3
    images, labels = parse_binary_batch(np.tile(record, 2).tobytes(), "mem")
    assert labels.tolist() == [9, 9]
    assert images.shape == (2, 3, 32, 32) and images[1, 1, 2, 3] == 77
    assert int(images.sum()) == 2 * 77


@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("archive", [False, True])
def test_both_formats_as_directory_and_archive(
    tmp_path: Path, fmt: Literal["python", "binary"], archive: bool
) -> None:
    where = write_fake_cifar10(tmp_path, fmt, n_per_batch=20, n_test=30, seed=5, archive=archive)
    ds = load_cifar10(where, validation_size=10)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (90, 10, 30)
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.train.images.dtype == torch.float32
    assert ds.test.labels.dtype == torch.int64 and int(ds.test.labels.max()) <= 9
    assert float(ds.train.images.min()) >= 0.0 and float(ds.train.images.max()) <= 1.0
    assert ds.classes == CIFAR10_CLASSES and ds.classes[3] == "cat"
    # The parent directory works too, found through the standard sub-directory / archive name.
    again = load_cifar10(tmp_path, validation_size=10)
    torch.testing.assert_close(again.test.images, ds.test.images)


def test_python_and_binary_hold_the_same_images(tmp_path: Path) -> None:
    a = load_cifar10(write_fake_cifar10(tmp_path / "p", "python", n_per_batch=8, seed=2))
    b = load_cifar10(write_fake_cifar10(tmp_path / "b", "binary", n_per_batch=8, seed=2))
    torch.testing.assert_close(a.train.images, b.train.images)
    assert a.train.labels.tolist() == b.train.labels.tolist()
    assert len(a.validation) == 0  # default: the seed validates on the test set


def test_default_places_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar10(tmp_path / "cache" / "cifar10", "binary", n_per_batch=4)
    assert len(load_cifar10(download=False).train) == 20
    write_fake_cifar10(tmp_path / "env" / "cifar10", "python", n_per_batch=6)
    monkeypatch.setenv("BNLAB_DATA_DIR", str(tmp_path / "env"))
    assert len(load_cifar10(download=False).train) == 30


def test_missing_everywhere_says_where_and_what_to_do(tmp_path: Path) -> None:
    def offline(url: str) -> bytes:
        raise FetchError(f"{url}: Name or service not known (is this machine offline?)")

    with pytest.raises(DatasetNotFoundError) as exc:
        load_cifar10(fetch=offline)
    msg = str(exc.value)
    assert str(tmp_path / "cache" / "cifar10") in msg  # where it looked
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "--data-dir" in msg and "offline" in msg


def test_missing_in_explicit_dir_does_not_download(tmp_path: Path) -> None:
    calls: list[str] = []
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="not attempted") as exc:
        load_cifar10(tmp_path / "empty", fetch=lambda u: calls.append(u) or b"")
    assert calls == [] and str(tmp_path / "empty") in str(exc.value)


def _fake_archive_bytes(tmp_path: Path) -> bytes:
    return write_fake_cifar10(tmp_path / "src", "python", n_per_batch=4, archive=True).read_bytes()


def test_download_verified_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlab.data import cifar

    data = _fake_archive_bytes(tmp_path)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(data).hexdigest())
    calls: list[str] = []
    ds = load_cifar10(fetch=lambda u: calls.append(u) or data)
    assert len(calls) == 1 and len(ds.train) == 20
    assert (tmp_path / "cache" / "cifar10" / PY_ARCHIVE).read_bytes() == data
    load_cifar10(fetch=lambda u: calls.append(u) or data)
    assert len(calls) == 1  # second load reads the cache


def test_download_checksum_mismatch_refetches_once_then_refuses(tmp_path: Path) -> None:
    from bnlab.data.cifar import download_cifar10

    calls: list[str] = []
    with pytest.raises(ChecksumError, match="md5 c58f30108f718f92721af3b95e74349a"):
        download_cifar10(fetch=lambda u: calls.append(u) or b"not the archive", progress=False)
    assert len(calls) == 2
    assert not (tmp_path / "cache" / "cifar10" / PY_ARCHIVE).exists()


def test_download_into_unwritable_cache(tmp_path: Path) -> None:
    from bnlab.data.cifar import download_cifar10

    (tmp_path / "blocker").write_text("x")
    with pytest.raises(CacheNotWritableError):
        download_cifar10(tmp_path / "blocker", fetch=lambda u: b"")


def test_directory_with_some_batches_missing(tmp_path: Path) -> None:
    d = write_fake_cifar10(tmp_path, "python", n_per_batch=4)
    (d / "data_batch_3").unlink()
    with pytest.raises(MissingFilesError, match="missing data_batch_3") as exc:
        load_cifar10(tmp_path)
    assert str(d) in str(exc.value)


def test_truncated_binary_batch(tmp_path: Path) -> None:
    d = write_fake_cifar10(tmp_path, "binary", n_per_batch=4)
    f = d / "data_batch_2.bin"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CorruptFileError) as exc:
        load_cifar10(d)
    msg = str(exc.value)
    assert str(f) in msg and "multiple of 3073 bytes" in msg and f"found {4 * 3073 - 10}" in msg


def test_truncated_python_batch(tmp_path: Path) -> None:
    d = write_fake_cifar10(tmp_path, "python", n_per_batch=4)
    f = d / "test_batch"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match="python-pickle batch") as exc:
        load_cifar10(d)
    assert str(f) in str(exc.value)


def test_python_batch_counts_disagree() -> None:
    with pytest.raises(CountMismatchError, match=r"2 images but .* 3 labels"):
        parse_python_batch(_python_batch(np.zeros((2, 3072), np.uint8), [0, 1, 2]), "b")


def test_python_batch_wrong_image_size_and_labels() -> None:
    with pytest.raises(CorruptFileError, match="N x 3072 uint8"):
        parse_python_batch(_python_batch(np.zeros((2, 100), np.uint8), [0, 1]), "b")
    with pytest.raises(CorruptFileError, match=r"values in 0\.\.9"):
        parse_python_batch(_python_batch(np.zeros((1, 3072), np.uint8), [10]), "b")
    with pytest.raises(CorruptFileError, match="keys"):
        parse_python_batch(pickle.dumps({"x": 1}, protocol=2), "b")


def test_binary_batch_bad_label() -> None:
    data = np.zeros(RECORD_BYTES, np.uint8)
    data[0] = 12
    with pytest.raises(CorruptFileError, match=r"range 12\.\.12"):
        parse_binary_batch(data.tobytes(), "b")


def test_pickle_cannot_run_code() -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    with pytest.raises(CorruptFileError, match=r"global __builtin__\.print is not allowed"):
        parse_python_batch(pickle.dumps({"data": Evil(), "labels": []}, protocol=2), "evil")


def test_archive_without_batches(tmp_path: Path) -> None:
    junk = tmp_path / "cifar-junk.tar.gz"
    with tarfile.open(junk, "w:gz") as tar:
        readme = tmp_path / "readme.txt"
        readme.write_text("nothing")
        tar.add(readme, arcname="readme.txt")
    with pytest.raises(CorruptFileError, match=r"archive content.*readme\.txt"):
        find_cifar10(junk)
    broken = tmp_path / PY_ARCHIVE
    broken.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(CorruptFileError, match=r"readable \.tar\.gz"):
        load_cifar10(broken)
