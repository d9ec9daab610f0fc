"""CIFAR-10 readers: the python-pickle batches and the binary format, from a directory or a
``.tar.gz`` archive, plus a checksummed download into the cache where a network exists.

Each image is 3072 bytes: 1024 red, 1024 green, 1024 blue, each a row-major 32x32 plane, so a
batch reshapes directly to ``(N, 3, 32, 32)``. See https://www.cs.toronto.edu/~kriz/cifar.html.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.data.cache import (
    DATA_ENV,
    atomic_write_bytes,
    cache_dir,
    ensure_writable_dir,
    env_data_dir,
)
from bnlab.data.datasets import (
    Datasets,
    Split,
    check_not_empty,
    labels_to_int64,
    uint8_to_float_nchw,
)
from bnlab.data.errors import (
    ChecksumError,
    CorruptFileError,
    CountMismatchError,
    DatasetNotFoundError,
    FetchError,
    MissingFilesError,
)
from bnlab.data.sources import download as http_get

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published for cifar-10-python.tar.gz
PY_ARCHIVE = "cifar-10-python.tar.gz"
BIN_ARCHIVE = "cifar-10-binary.tar.gz"
PY_DIR = "cifar-10-batches-py"
BIN_DIR = "cifar-10-batches-bin"
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES  # binary format: one label byte, then the image
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

# The python batches are pickles; only what a numpy array needs may be loaded from them,
# so a crafted file cannot run code.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


@dataclass(frozen=True)
class CifarFormat:
    """One on-disk CIFAR-10 layout: its batch file names and how to parse one."""

    name: str  # "python" or "binary"
    subdir: str
    archive: str
    train: tuple[str, ...]
    test: str
    parse: Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def parse_python_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one python-pickle batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Raises:
        CorruptFileError: not a pickle, not a dict with ``data``/``labels``, wrong image size,
            or a label outside 0..9.
        CountMismatchError: ``data`` and ``labels`` differ in length.
    """
    expected = "a pickled dict with 'data' (N x 3072 uint8) and 'labels' (N ints)"
    try:
        # latin1 is how Python 2 strings (the original files) decode losslessly to str.
        batch = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise CorruptFileError(name, "python-pickle batch", expected, repr(exc)) from exc
    if not isinstance(batch, dict):
        raise CorruptFileError(name, "python-pickle batch", expected, type(batch).__name__)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise CorruptFileError(name, "python-pickle batch", expected, f"keys {sorted(batch)}")
    images = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != IMAGE_BYTES:
        raise CorruptFileError(
            name, "'data' array", f"N x {IMAGE_BYTES} uint8", f"{images.shape} {images.dtype}"
        )
    if len(images) != len(labels):
        raise CountMismatchError(f"{name}['data']", len(images), f"{name}['labels']", len(labels))
    _check_labels(labels, name)
    return images.reshape(-1, 3, 32, 32), labels


def parse_binary_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one binary batch (records of 1 label byte + 3072 pixel bytes).

    Raises:
        CorruptFileError: a size that is not a positive multiple of 3073 bytes, or a label
            byte outside 0..9.
    """
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise CorruptFileError(
            name,
            "file size",
            f"a positive multiple of {RECORD_BYTES} bytes (1 label + {IMAGE_BYTES} pixels per "
            "image; 30730000 for a full batch)",
            f"{len(data)} bytes",
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, name)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _check_labels(labels: np.ndarray, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptFileError(
            name, "labels", "values in 0..9", f"range {labels.min()}..{labels.max()}"
        )


PYTHON_FORMAT = CifarFormat(
    "python", PY_DIR, PY_ARCHIVE, TRAIN_BATCHES, TEST_BATCH, parse_python_batch
)
BINARY_FORMAT = CifarFormat(
    "binary",
    BIN_DIR,
    BIN_ARCHIVE,
    tuple(f"{b}.bin" for b in TRAIN_BATCHES),
    f"{TEST_BATCH}.bin",
    parse_binary_batch,
)
FORMATS = (PYTHON_FORMAT, BINARY_FORMAT)


@dataclass(frozen=True)
class CifarLocation:
    """A complete set of CIFAR-10 batches: a directory or an archive, and its format."""

    path: Path
    fmt: CifarFormat
    is_archive: bool

    def describe(self) -> str:
        kind = "archive" if self.is_archive else "directory"
        return f"{self.path} ({self.fmt.name} batches, {kind})"


def _find_in_directory(directory: Path) -> CifarLocation | None:
    """Look in ``directory``, its standard sub-directories, ``cifar10/`` and archives there."""
    for base in (directory, directory / "cifar10"):
        if not base.is_dir():
            continue
        for fmt in FORMATS:
            for d in (base, base / fmt.subdir):
                present = [f for f in fmt.files if (d / f).is_file()]
                if len(present) == len(fmt.files):
                    return CifarLocation(d, fmt, is_archive=False)
                if present:
                    missing = [f for f in fmt.files if f not in present]
                    raise MissingFilesError(d, missing, present)
        for fmt in FORMATS:
            if (base / fmt.archive).is_file():
                # The standard archive names say their format; listing a 163 MiB .tar.gz
                # would cost a full decompression.
                return CifarLocation(base / fmt.archive, fmt, is_archive=True)
    return None


def _archive_format(path: Path) -> CifarFormat:
    """Which format an archive holds: from its standard name, else from its member names."""
    for fmt in FORMATS:
        if path.name == fmt.archive:
            return fmt
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {Path(m.name).name for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptFileError(path, "archive", "a readable .tar.gz", repr(exc)) from exc
    for fmt in FORMATS:
        if set(fmt.files) <= names:
            return fmt
    want = f"{', '.join(PYTHON_FORMAT.files)} (or the .bin files)"
    raise CorruptFileError(path, "archive content", want, ", ".join(sorted(names)) or "no files")


def find_cifar10(path: str | Path) -> CifarLocation | None:
    """Find CIFAR-10 at ``path`` (a directory or an archive file); ``None`` if absent.

    Raises:
        MissingFilesError: a directory with only some of the batch files.
        CorruptFileError: an archive that is unreadable or lacks the batches.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return CifarLocation(p, _archive_format(p), is_archive=True)
    return _find_in_directory(p)


#: The largest batch file read: a published one holds 10,000 images (about 31 MB), so
#: anything far larger is corrupt or a decompression bomb, refused before it is read.
MAX_BATCH_FILE_BYTES = 64 * 2**20


def _check_size(size: int, name: str) -> None:
    if size > MAX_BATCH_FILE_BYTES:
        raise CorruptFileError(
            name, "batch file size", f"at most {MAX_BATCH_FILE_BYTES} bytes", f"{size} bytes"
        )


def _read_batches(location: CifarLocation) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fmt = location.fmt
    out = {}
    if not location.is_archive:
        for f in fmt.files:
            path = location.path / f
            _check_size(path.stat().st_size, str(path))
            out[f] = fmt.parse(path.read_bytes(), str(path))
        return out
    try:
        with tarfile.open(location.path, "r:*") as tar:
            for member in tar.getmembers():
                base = Path(member.name).name
                if member.isfile() and base in fmt.files and base not in out:
                    name = f"{location.path}:{member.name}"
                    _check_size(member.size, name)  # as the tar header declares it
                    handle = tar.extractfile(member)
                    if handle is not None:
                        out[base] = fmt.parse(handle.read(MAX_BATCH_FILE_BYTES), name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptFileError(location.path, "archive", "a readable .tar.gz", repr(exc)) from exc
    missing = [f for f in fmt.files if f not in out]
    if missing:
        raise MissingFilesError(location.path, missing, sorted(out))
    return out


def read_cifar10(location: CifarLocation, *, validation_size: int = 0) -> Datasets:
    """Read all six batches at ``location`` into :class:`Datasets`.

    train = the five training batches minus the first ``validation_size`` images, which form
    the validation split (default none: the seed validates on the test set); test = the test
    batch. Images float32 ``(N, 3, 32, 32)`` in ``[0, 1]``, labels int64.

    Raises:
        CorruptFileError, CountMismatchError, MissingFilesError: see the parsers.
        ValueError: ``validation_size`` outside ``[0, n_train)``.
    """
    batches = _read_batches(location)
    train_x = np.concatenate([batches[f][0] for f in location.fmt.train])
    train_y = np.concatenate([batches[f][1] for f in location.fmt.train])
    n_test = len(batches[location.fmt.test][1])
    check_not_empty({"train": len(train_y) - validation_size, "test": n_test}, str(location.path))
    if not 0 <= validation_size < len(train_y):
        raise ValueError(f"validation_size must lie in [0, {len(train_y)}), got {validation_size}")
    x = uint8_to_float_nchw(train_x)
    y = labels_to_int64(train_y)
    test_x, test_y = batches[location.fmt.test]
    return Datasets(
        train=Split(x[validation_size:], y[validation_size:]),
        validation=Split(x[:validation_size], y[:validation_size]),
        test=Split(uint8_to_float_nchw(test_x), labels_to_int64(test_y)),
        name="cifar10",
        classes=CIFAR10_CLASSES,
        source=str(location.path),
        provenance=cifar_provenance(location),
    )


def cifar_provenance(location: CifarLocation, origin: str = "") -> dict[str, Any]:
    """The provenance record of CIFAR-10 at ``location``: the archive (compared with the
    published MD5 of the python archive) or each batch file (nothing published to compare
    with: ``published`` is ``None``)."""
    from bnlab.data.provenance import make_provenance

    if location.is_archive:
        files = {location.path.name: location.path}
        md5 = CIFAR10_MD5 if location.path.name == PY_ARCHIVE else None
    else:
        names = (*location.fmt.train, location.fmt.test)
        files = {name: location.path / name for name in names}
        md5 = None
    return make_provenance(
        "cifar10",
        origin or "directory",
        location.path,
        files,
        archive_md5=md5,
        decompress=False,
    )


def download_cifar10(
    cache_root: str | Path | None = None,
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    fetch: Callable[[str], bytes] | None = None,
) -> Path:
    """Download the python archive into ``<cache>/cifar10/``, verified by MD5 (one refetch).

    Args:
        url, md5: default :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`.
        fetch: ``url -> bytes`` (tests inject one); default an HTTP GET with a progress bar.

    Returns:
        The archive path.

    Raises:
        CacheNotWritableError: the cache directory cannot be written.
        FetchError: the download failed (e.g. no network).
        ChecksumError: the archive failed its MD5 twice.
    """
    import hashlib

    target_dir = ensure_writable_dir(cache_dir("cifar10", cache_root))
    get = fetch or (lambda u: http_get(u, timeout=30.0, progress=progress, limit=400 << 20))
    url = url or CIFAR10_URL
    md5 = md5 or CIFAR10_MD5
    digest = ""
    for _attempt in (1, 2):
        data = get(url)
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if digest == md5:
            target = target_dir / PY_ARCHIVE
            atomic_write_bytes(target, data)
            return target
    raise ChecksumError(PY_ARCHIVE, url, f"md5 {md5}", f"md5 {digest}")


def locate_cifar10(
    data_dir: str | Path | None = None, *, cache_root: str | Path | None = None
) -> tuple[CifarLocation | None, list[str]]:
    """Find CIFAR-10 locally: ``(location or None, places looked)``.

    Order: ``data_dir`` (only it, when given); ``$BNLAB_DATA_DIR``; ``<cache>/cifar10``.
    """
    if data_dir is not None:
        places = [str(Path(data_dir).expanduser())]
    else:
        env = env_data_dir()
        places = [str(env)] if env is not None else []
        places.append(str(cache_dir("cifar10", cache_root)))
    for place in places:
        found = find_cifar10(place)
        if found is not None:
            return found, places
    return None, places


def load_cifar10(
    data_dir: str | Path | None = None,
    *,
    progress: bool = True,
    validation_size: int = 0,
    download: bool = True,
    cache_root: str | Path | None = None,
    fetch: Callable[[str], bytes] | None = None,
) -> Datasets:
    """Load CIFAR-10 (50,000 train, 10,000 test, 32x32 RGB) as float32 NCHW in ``[0, 1]``.

    Sources, in order: ``data_dir`` (only it, when given); ``$BNLAB_DATA_DIR``; the cache
    ``<cache>/cifar10``; then, if ``download``, :data:`CIFAR10_URL` into the cache (MD5
    checked). Each place may hold ``cifar-10-batches-py/`` or ``cifar-10-batches-bin/``, the
    batch files themselves, or ``cifar-10-python.tar.gz`` / ``cifar-10-binary.tar.gz``;
    ``data_dir`` may also be such an archive.

    Args:
        data_dir: a directory or archive holding CIFAR-10.
        progress: show a progress bar while downloading (only on a terminal).
        validation_size: training images (the first ones) held out as validation; default 0.
        download: try the download when no local copy exists (never with ``data_dir``).
        cache_root: overrides ``$BNLAB_CACHE_DIR`` / ``~/.cache/bnlab``.
        fetch: ``url -> bytes`` replacing the HTTP download (tests).

    Raises:
        DatasetNotFoundError: no copy anywhere and the download failed or was not allowed;
            the message lists the places looked and how to get the data.
        CorruptFileError, CountMismatchError, MissingFilesError, ChecksumError: bad files.

    >>> ds = load_cifar10()  # doctest: +SKIP
    >>> ds.train.images.shape, ds.classes[3]  # doctest: +SKIP
    (torch.Size([50000, 3, 32, 32]), 'cat')
    """
    location, places = locate_cifar10(data_dir, cache_root=cache_root)
    if location is None:
        reason = "not attempted (a --data-dir was given)" if data_dir is not None else "disabled"
        if download and data_dir is None:
            try:
                archive = download_cifar10(cache_root, progress=progress, fetch=fetch)
            except FetchError as exc:
                reason = f"failed: {exc}"
            else:
                location = find_cifar10(archive)
        if location is None:
            raise DatasetNotFoundError(missing_message(places, reason, cache_root))
    return read_cifar10(location, validation_size=validation_size)


def missing_message(places: Sequence[str], reason: str, cache_root: str | Path | None) -> str:
    """The CIFAR-10-not-found message: places looked, why no download, what to do."""
    cache = cache_dir("cifar10", cache_root)
    return (
        f"CIFAR-10 not found. Looked in: {'; '.join(places)} (for {PY_DIR}/, {BIN_DIR}/, the "
        f"batch files, {PY_ARCHIVE} or {BIN_ARCHIVE}). Download {reason}. To fix: on a machine "
        f"with internet, download {CIFAR10_URL} (163 MiB, md5 {CIFAR10_MD5}) and either put "
        f"it in {cache}/ or pass its directory or the archive itself as --data-dir (or set "
        f"{DATA_ENV}); or run `bnlab data fetch cifar10` where a network is available."
    )
