"""Integrity checks: published sizes and digests of the data files, and how to verify them.

A file is accepted only when its size and its digest both match; the size is checked first
because it is free and catches truncated downloads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A file bnlab knows by name, size and digest.

    Attributes:
        name: the standard file name (uncompressed), e.g. ``"train-images-idx3-ubyte"``.
        size: size in bytes of the uncompressed file.
        sha256: lowercase hex SHA-256 of the uncompressed file.
    """

    name: str
    size: int
    sha256: str

    def mismatch(self, data: bytes) -> tuple[str, str] | None:
        """Return ``(expected, found)`` describing the first difference, or ``None`` if ok."""
        if len(data) != self.size:
            return f"{self.size} bytes", f"{len(data)} bytes"
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            return f"sha256 {self.sha256}", f"sha256 {digest}"
        return None

    def file_mismatch(self, path: str | Path) -> tuple[str, str] | None:
        """Like :meth:`mismatch` for a file on disk, read in chunks; a missing file is one."""
        p = Path(path)
        if not p.is_file():
            return f"{self.size} bytes", "no file"
        size = p.stat().st_size
        if size != self.size:
            return f"{self.size} bytes", f"{size} bytes"
        digest = sha256_file(p)
        if digest != self.sha256:
            return f"sha256 {self.sha256}", f"sha256 {digest}"
        return None


def sha256_file(path: str | Path) -> str:
    """Return the lowercase hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: str | Path) -> str:
    """Return the lowercase hex MD5 of a file (CIFAR-10 publishes MD5 digests only)."""
    h = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# The original MNIST files (LeCun et al.), uncompressed; digests from the project design.
MNIST_FILES: tuple[FileSpec, ...] = (
    FileSpec(
        "train-images-idx3-ubyte",
        47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    FileSpec(
        "train-labels-idx1-ubyte",
        60_008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    FileSpec(
        "t10k-images-idx3-ubyte",
        7_840_016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    FileSpec(
        "t10k-labels-idx1-ubyte",
        10_008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
)
