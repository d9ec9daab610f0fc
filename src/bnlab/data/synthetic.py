"""Small synthetic data sets in the real on-disk formats, for tests and ``--quick`` runs.

Each class has a fixed blocky template; an example is its template at a random brightness,
shifted by up to one pixel, plus Gaussian noise, so a tiny network learns it within a few
hundred steps while the files exercise exactly the readers used for the real data.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from bnlab.data.cache import atomic_write_bytes
from bnlab.data.cifar import (
    BIN_ARCHIVE,
    BINARY_FORMAT,
    CIFAR10_CLASSES,
    PY_ARCHIVE,
    PYTHON_FORMAT,
)
from bnlab.data.errors import DataExistsError
from bnlab.data.idx import write_idx
from bnlab.data.integrity import sha256_file
from bnlab.data.mnist import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from bnlab.data.sources import candidate_names

TEMPLATE_SEED = 20_240_601  # class templates are the same for every seed and every file

#: Written beside the fakes: ``{"files": {relative path: sha256}}``. A file is a bnlab fake
#: (and may be replaced) only if it is listed there with its current digest.
FAKE_MARKER = ".bnlab-fake.json"

Overwrite = Literal["never", "fakes"]


def _recorded_fakes(out: Path) -> dict[str, str]:
    marker = out / FAKE_MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _guard(out: Path, paths: Sequence[Path], overwrite: Overwrite) -> None:
    """Refuse to write over files that exist (``"never"``) or that are not recorded fakes
    with their recorded digest (``"fakes"``): real data must never be replaced.

    Raises:
        DataExistsError: naming the first file in the way and what to do.
    """
    existing = [p for p in paths if p.exists()]
    if not existing:
        return
    fakes = _recorded_fakes(out)
    for path in existing:
        key = str(path.relative_to(out))
        is_fake = path.is_file() and fakes.get(key) == sha256_file(path)
        if overwrite == "never" or not is_fake:
            how = (
                "choose another --out, or --force to replace an earlier bnlab fake"
                if is_fake
                else "it is not a bnlab fake (not recorded in "
                f"{FAKE_MARKER}, or changed since), so it is never replaced: choose another --out"
            )
            raise DataExistsError(
                f"{path} already exists; bnlab data fake does not overwrite files: {how}"
            )


def _record(out: Path, paths: Sequence[Path]) -> None:
    fakes = _recorded_fakes(out)
    fakes.update({str(p.relative_to(out)): sha256_file(p) for p in paths})
    atomic_write_bytes(
        out / FAKE_MARKER,
        (json.dumps({"files": fakes}, indent=2, sort_keys=True) + "\n").encode(),
    )


def _templates(num_classes: int, channels: int, size: int) -> np.ndarray:
    """``(num_classes, channels, size, size)`` float templates in {0, 1}: random 7x7-ish
    masks upsampled to ``size``; distinct per class, identical across calls."""
    cells = 7
    rng = np.random.default_rng(TEMPLATE_SEED)
    masks = rng.random((num_classes, channels, cells, cells)) < 0.4
    reps = -(-size // cells)
    big = masks.repeat(reps, axis=2).repeat(reps, axis=3)[:, :, :size, :size]
    return big.astype(np.float32)


def _examples(
    labels: np.ndarray,
    rng: np.random.Generator,
    channels: int,
    size: int,
    num_classes: int,
    noise: float,
) -> np.ndarray:
    """uint8 ``(N, channels, size, size)`` noisy, shifted templates for ``labels``."""
    templates = _templates(num_classes, channels, size)
    n = len(labels)
    brightness = rng.uniform(0.6, 1.0, size=(n, 1, 1, 1)).astype(np.float32)
    x = templates[labels] * brightness * 255.0
    shifts = rng.integers(-1, 2, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        x[i] = np.roll(x[i], (int(dy), int(dx)), axis=(1, 2))
    x += rng.normal(0.0, noise, size=x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def write_fake_mnist(
    directory: str | Path,
    n_train: int = 600,
    n_test: int = 100,
    seed: int = 0,
    gzip: bool = False,
    *,
    image_size: int = 28,
    num_classes: int = 10,
    noise: float = 30.0,
    overwrite: Overwrite = "fakes",
) -> Path:
    """Write four valid MNIST-format IDX files (standard names) into ``directory``.

    ``load_mnist(directory)`` then splits off ``n_train // 12`` validation images (capped at
    5,000, see ``mnist_validation_size``): 600 training images give 550 / 50.

    Args:
        directory: created if needed.
        n_train, n_test: example counts (``n_train >= 12`` leaves a non-empty validation).
        seed: fixes labels, brightness, shifts and noise (the class templates never change).
        gzip: write ``*.gz`` files instead of raw ones.
        image_size: height = width of the images.
        num_classes: labels are ``0 .. num_classes-1``, balanced.
        noise: standard deviation of the Gaussian pixel noise, in grey levels (0..255);
            raise it (e.g. 120) to make the task harder than the default's near-100% accuracy.
        overwrite: ``"fakes"`` replaces files this function wrote before (recorded in
            ``.bnlab-fake.json`` with their digest); ``"never"`` refuses any existing file.
            Any other MNIST file in ``directory`` (raw, ``.gz`` or dotted name) is never
            replaced or shadowed.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        DataExistsError: a file is in the way (nothing is written then).
        ValueError: a count or size out of range.

    >>> import tempfile
    >>> from bnlab.data import load_mnist
    >>> ds = load_mnist(write_fake_mnist(tempfile.mkdtemp(), n_train=120, n_test=20))
    >>> len(ds.train), len(ds.validation), len(ds.test)
    (110, 10, 20)
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must lie in [1, 256], got {num_classes}")
    out = Path(directory)
    names = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    # Every name the loader accepts: a fake beside real files would shadow or mix with them.
    _guard(out, [out / c for n in names for c in candidate_names(n)], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gzip else ""
    for images_name, labels_name, n in (
        (TRAIN_IMAGES, TRAIN_LABELS, n_train),
        (TEST_IMAGES, TEST_LABELS, n_test),
    ):
        labels = _balanced_labels(n, num_classes, rng)
        images = _examples(labels, rng, 1, image_size, num_classes, noise)[:, 0]
        write_idx(out / f"{images_name}{suffix}", images)
        write_idx(out / f"{labels_name}{suffix}", labels)
    _record(out, [out / f"{n}{suffix}" for n in names])
    return out


def write_fake_cifar10(
    directory: str | Path,
    fmt: Literal["python", "binary"] = "python",
    n_per_batch: int = 100,
    *,
    n_test: int | None = None,
    seed: int = 0,
    archive: bool = False,
    noise: float = 30.0,
    overwrite: Overwrite = "fakes",
) -> Path:
    """Write a small CIFAR-10 in one of its real formats.

    ``fmt="python"`` writes ``cifar-10-batches-py/`` (pickled dicts with ``data``, ``labels``,
    ``batch_label``, ``filenames``, protocol 2 as the originals, plus ``batches.meta``);
    ``fmt="binary"`` writes ``cifar-10-batches-bin/`` (``data_batch_1.bin`` ... of 3073-byte
    records, plus ``batches.meta.txt``). With ``archive=True`` the same tree is written as
    ``cifar-10-python.tar.gz`` / ``cifar-10-binary.tar.gz`` instead.

    Args:
        directory: created if needed.
        n_per_batch: images in each of the five training batches.
        n_test: images in the test batch (default ``n_per_batch``).
        seed: fixes labels and noise.
        archive: write the ``.tar.gz`` instead of the directory.
        noise: standard deviation of the Gaussian pixel noise, in levels (0..255).
        overwrite: as in :func:`write_fake_mnist` (existing non-fake files are never
            replaced).

    Returns:
        The batch directory or the archive written (pass it, or ``directory``, to
        ``load_cifar10``).
    """
    if fmt not in ("python", "binary"):
        raise ValueError(f"fmt must be 'python' or 'binary', got {fmt!r}")
    if n_per_batch < 1:
        raise ValueError(f"n_per_batch must be positive, got {n_per_batch}")
    n_test = n_per_batch if n_test is None else n_test
    if n_test < 1:
        raise ValueError(f"n_test must be positive, got {n_test}")
    spec = PYTHON_FORMAT if fmt == "python" else BINARY_FORMAT
    out = Path(directory)
    archive_path = out / (PY_ARCHIVE if fmt == "python" else BIN_ARCHIVE)
    batch_names = (*spec.files, "batches.meta" if fmt == "python" else "batches.meta.txt")
    targets = [archive_path] if archive else [out / spec.subdir / n for n in batch_names]
    _guard(out, targets, overwrite)
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for i, name in enumerate(spec.files):
        n = n_test if name == spec.test else n_per_batch
        labels = _balanced_labels(n, 10, rng)
        images = _examples(labels, rng, 3, 32, 10, noise).reshape(n, -1)
        if fmt == "python":
            title = "testing batch 1 of 1" if name == spec.test else f"training batch {i + 1} of 5"
            batch = {
                "batch_label": title,
                "labels": [int(v) for v in labels],
                "data": images,
                "filenames": [f"fake_{i}_{j}.png" for j in range(n)],
            }
            files[name] = pickle.dumps(batch, protocol=2)
        else:
            files[name] = np.concatenate([labels[:, None], images], axis=1).tobytes()
    if fmt == "python":
        meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": n_per_batch}
        files["batches.meta"] = pickle.dumps({**meta, "num_vis": 3072}, protocol=2)
    else:
        files["batches.meta.txt"] = ("\n".join(CIFAR10_CLASSES) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    if archive:
        buf = io.BytesIO()
        # Level 1: noisy pixels barely compress, and level 9 is ~10x slower on them.
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{spec.subdir}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        atomic_write_bytes(archive_path, buf.getvalue())
        _record(out, [archive_path])
        return archive_path
    batch_dir = out / spec.subdir
    batch_dir.mkdir(exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(batch_dir / name, data)
    _record(out, [batch_dir / name for name in files])
    return batch_dir
