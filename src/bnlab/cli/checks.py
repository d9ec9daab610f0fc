"""Checks of command-line paths made before any work starts (no data loaded, nothing trained).

Each check raises :class:`~bnlab.errors.BnlabError` with one line naming the option, what is
wrong and what to do; none of them creates a directory or leaves a file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bnlab.errors import BnlabError

__all__ = ["writable_dir", "writable_file"]


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()  # pragma: no cover - "/" always exists


def _probe(directory: Path, flag: str, target: Path) -> None:
    """Create and remove a temporary file in ``directory`` (``os.access`` is not enough:
    a read-only mount or root's view of permissions would pass it)."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".bnlab-probe-", suffix=".tmp")
    except OSError as exc:
        raise BnlabError(
            f"{flag} {target}: cannot write in {directory} ({exc.strerror or exc}); "
            f"choose a writable location with {flag}"
        ) from exc
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` is, or can be created as, a directory bnlab can write into.

    Raises:
        BnlabError: ``path`` (or a parent) is a file, or the nearest existing directory is
            not writable.
    """
    target = Path(path).expanduser()
    found = _existing_ancestor(target)
    if not found.is_dir():
        what = "is a file" if found == target else f"lies under the file {found}"
        raise BnlabError(f"{flag} {target} {what}; expected a directory: choose another {flag}")
    _probe(found, flag, target)
    return target


def writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that ``path`` names a file bnlab can (over)write atomically.

    Raises:
        BnlabError: ``path`` is a directory, lies under a file, or its directory is not
            writable.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise BnlabError(
            f"{flag} {target} is a directory; expected a file name, e.g. {target / 'bench.json'}"
        )
    found = _existing_ancestor(target.parent)
    if not found.is_dir():
        raise BnlabError(
            f"{flag} {target} lies under the file {found}; expected a directory there: "
            f"choose another {flag}"
        )
    _probe(found, flag, target)
    return target
