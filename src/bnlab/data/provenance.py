"""Provenance: which files a data set was read from, and whether they are the published ones.

A provenance record is a JSON-ready dict kept on :class:`~bnlab.data.Datasets` and written to
each run directory (``data.json``)::

    {"dataset": "mnist", "origin": "cache", "directory": "/root/.cache/bnlab/mnist",
     "published": true, "files": [{"name": ..., "path": ..., "size": ..., "sha256": ...}],
     "fingerprint": "<sha256 of the names and digests>"}

``published`` is ``True`` when every file matches the published digests, ``False`` when one
does not (a fake, a subset, Fashion-MNIST in MNIST format, ...) and ``None`` when nothing is
published to compare with (e.g. extracted CIFAR-10 batch files). ``fingerprint`` identifies
the content only (not where it lies): the engine reuses a finished run only when it matches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnlab.data.errors import CorruptFileError
from bnlab.data.idx import GZIP_MAGIC
from bnlab.data.integrity import CHUNK, FileSpec, md5_file, sha256_file

__all__ = ["content_digest", "file_record", "fingerprint", "make_provenance"]


def content_digest(path: str | Path) -> tuple[int, str]:
    """``(size, sha256)`` of a file's content, gunzipped first when it is gzipped (so a
    ``.gz`` copy of a published file has the published digest), streamed in chunks.

    Raises:
        CorruptFileError: a truncated or damaged gzip stream.
    """
    p = Path(path)
    with p.open("rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    if not gzipped:
        return p.stat().st_size, sha256_file(p)
    h = hashlib.sha256()
    size = 0
    try:
        with gzip.open(p, "rb") as handle:
            while chunk := handle.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(p, "gzip stream", "a complete gzip stream", str(exc)) from exc
    return size, h.hexdigest()


def file_record(name: str, path: str | Path, *, decompress: bool = True) -> dict[str, Any]:
    """``{"name", "path", "size", "sha256", "gzip"}`` of one file; with ``decompress`` the
    size and digest are those of the uncompressed content. ``path`` is absolute."""
    p = Path(path).expanduser().resolve()
    with p.open("rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    if decompress:
        size, digest = content_digest(p)
    else:
        size, digest = p.stat().st_size, sha256_file(p)
    return {"name": name, "path": str(p), "size": size, "sha256": digest, "gzip": gzipped}


def fingerprint(files: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the files' names, sizes and digests (not their paths): the same content
    read from another directory has the same fingerprint."""
    items = sorted((str(f["name"]), int(f["size"]), str(f["sha256"])) for f in files)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def make_provenance(
    dataset: str,
    origin: str,
    directory: str | Path,
    files: Mapping[str, str | Path],
    *,
    published: Sequence[FileSpec] | None = None,
    archive_md5: str | None = None,
    decompress: bool = True,
) -> dict[str, Any]:
    """Build the provenance record of a data set read from ``files`` (``{name: path}``).

    Args:
        dataset: ``"mnist"``, ``"cifar10"``, ...
        origin: where bnlab found it (``"data_dir"``, ``"BNLAB_DATA_DIR"``, ``"cache"``,
            ``"fetched"``, ...).
        directory: the directory (or archive) read.
        published: the published sizes and digests to compare with (MNIST); ``None``: none.
        archive_md5: for a single archive file, its published MD5 (CIFAR-10), compared
            instead of ``published``.
        decompress: digest gzipped files' content (IDX files); ``False`` for archives.
    """
    records = [file_record(name, path, decompress=decompress) for name, path in files.items()]
    verdict: bool | None = None
    if published is not None:
        specs = {s.name: s for s in published}
        verdict = all(
            r["name"] in specs
            and r["size"] == specs[r["name"]].size
            and r["sha256"] == specs[r["name"]].sha256
            for r in records
        )
    elif archive_md5 is not None and len(records) == 1:
        verdict = md5_file(records[0]["path"]) == archive_md5
    return {
        "dataset": dataset,
        "origin": origin,
        "directory": str(Path(directory).expanduser().resolve()),
        "published": verdict,
        "files": records,
        "fingerprint": fingerprint(records),
    }
