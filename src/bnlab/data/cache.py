"""The user data cache and atomic file writes.

The cache root is ``$BNLAB_CACHE_DIR`` or ``~/.cache/bnlab``; each data set has a sub-directory
(``mnist/``, ``cifar10/``). Every file bnlab writes goes to a temporary file in the same
directory first and is then renamed, so an interrupted write never leaves a file that looks
complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from bnlab.data.errors import CacheNotWritableError

CACHE_ENV = "BNLAB_CACHE_DIR"
DATA_ENV = "BNLAB_DATA_DIR"


def cache_root() -> Path:
    """Return the cache root: ``$BNLAB_CACHE_DIR`` if set and non-empty, else ``~/.cache/bnlab``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bnlab"


def cache_dir(dataset: str, root: str | Path | None = None) -> Path:
    """Return the cache directory of one data set (not created): ``<root>/<dataset>``."""
    return (Path(root).expanduser() if root is not None else cache_root()) / dataset


def env_data_dir() -> Path | None:
    """Return ``$BNLAB_DATA_DIR`` as a path, or ``None`` when unset or empty."""
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else None


def ensure_writable_dir(directory: str | Path) -> Path:
    """Create ``directory`` (with parents) and check a file can be written in it.

    Raises:
        CacheNotWritableError: the directory cannot be created, or a probe file cannot be
            written there (read-only file system, a file in the way, no permission).
    """
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # mkdir succeeding does not prove we may create files (e.g. a read-only mount or a
        # directory owned by someone else), so write and remove a probe file.
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CacheNotWritableError(path, exc.strerror or str(exc)) from exc
    return path


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path`` for binary writing; rename it on success.

    On any exception the temporary file is removed and ``path`` is left untouched. The data
    is flushed and fsync'ed before the rename so a crash cannot expose a partial file.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> with atomic_writer(target) as f:
    ...     _ = f.write(b"abc")
    >>> target.read_bytes()
    b'abc'
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; data files are meant to be readable like any other.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, rename)."""
    with atomic_writer(path) as handle:
        handle.write(data)
