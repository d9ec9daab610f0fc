"""Atomic file writes for run directories: JSON, text, bytes and torch checkpoints.

Every file is written to a temporary file in the same directory, flushed, fsync'ed and then
renamed over the target, so a process killed mid-write never leaves a file that looks
complete (the rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666`` minus the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.

    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_open(target) as f:
    ...     _ = f.write(b"hello")
    >>> target.read_bytes()
    b'hello'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            # mkstemp creates 0600 files; give the result the permissions of a plain open().
            os.fchmod(handle.fileno(), _new_file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        # BaseException: a KeyboardInterrupt mid-write must not leave the temporary behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError) and not exc.filename and exc.errno:
            # A write or fsync that failed (a full disk) names no file: name the target.
            raise named(exc, target) from exc
        raise


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name (the same errno, so the same subclass:
    ``OSError(ENOSPC, ...)``, ``PermissionError`` for ``EACCES``)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_open(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def to_json(obj: Any) -> str:
    """Serialize ``obj`` as stable, human-readable JSON (sorted keys, 2-space indent, newline).

    Non-finite floats are written as JSON ``NaN``/``Infinity`` tokens, which Python's
    :func:`json.loads` reads back; a diverged run keeps its evidence.
    """
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (see :func:`to_json`) to ``path`` atomically."""
    write_text_atomic(path, to_json(obj))


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid JSON (the message names the file).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: expected a JSON document, found invalid JSON ({exc})") from exc


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, rename).

    The object is serialized in memory first, so a full disk raises the plain ``OSError``
    (``No space left on device``) rather than torch's serialization error around it.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())
