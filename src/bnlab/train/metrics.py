"""The metrics log of a run: one JSON object per line in ``metrics.jsonl``.

Every record has ``phase`` (a training phase name), ``tag`` (what was measured: ``"train"``
for the per-step training loss, ``"validation"``, ``"test"``, ...), ``step`` (optimizer
updates completed) and numeric values. Records are buffered in memory and appended in
chunks; a resumed run truncates the file back to its checkpoint's offset, so no record is
ever duplicated or lost across an interruption.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bnlab.train.io import named
from bnlab.train.runfiles import (
    MAX_LOG_BYTES,
    RunFileError,
    check_record,
    file_kind,
    read_bounded,
)

Record = dict[str, Any]
NEWLINE = b"\n"


def _encode(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=True)


class MetricsLog:
    """Buffered, append-only writer of ``metrics.jsonl``.

    Args:
        path: the file to append to; ``None`` keeps records in memory only (library use).

    Records are kept in :attr:`records` as well, so callers can read what was logged in this
    run since it started or resumed, without re-reading the file.

    >>> log = MetricsLog(None)
    >>> log.append({"phase": "train", "tag": "validation", "step": 1, "accuracy": 0.5})
    >>> log.flush()
    0
    >>> log.records[0]["accuracy"]
    0.5
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: list[Record] = []
        self._pending: list[str] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any]) -> None:
        """Buffer one record (written at the next :meth:`flush`).

        Raises:
            ValueError: the record lacks ``tag`` or ``step``.
        """
        if "tag" not in record or "step" not in record:
            raise ValueError(f"a metrics record needs 'tag' and 'step'; got keys {sorted(record)}")
        self.records.append(dict(record))
        if self.path is not None:
            self._pending.append(_encode(record))

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Buffer several records."""
        for record in records:
            self.append(record)

    def flush(self, *, fsync: bool = False) -> int:
        """Append the buffered records to the file; return the file size in bytes afterwards.

        Args:
            fsync: also force the data to disk (done before a checkpoint records the offset).
        """
        if self.path is None:
            return 0
        kind = file_kind(self.path)
        if kind is not None:  # opening a FIFO to append would block until a reader came
            raise RunFileError(self.path, f"expected a regular file, found {kind}")
        try:
            if self._pending:
                # One write per chunk: a kill mid-write can tear at most the last line, which
                # the reader drops and a resume truncates away.
                data = ("\n".join(self._pending) + "\n").encode("utf-8")
                with open(self.path, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    if fsync:
                        os.fsync(handle.fileno())
                self._pending.clear()
            elif fsync and self.path.exists():
                with open(self.path, "ab") as handle:
                    os.fsync(handle.fileno())
        except OSError as exc:
            if exc.filename or not exc.errno:
                raise
            raise named(exc, self.path) from exc  # a full disk names no file: name the log
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Cut the file back to ``offset`` bytes (the size recorded by a checkpoint).

        Raises:
            ValueError: ``offset`` is negative or beyond the end of the file.
        """
        if self.path is None:
            return
        self._pending.clear()
        size = self.path.stat().st_size if self.path.exists() else 0
        if offset < 0 or offset > size:
            raise ValueError(
                f"{self.path}: cannot truncate to {offset} bytes; the file holds {size} bytes "
                "(the metrics log is shorter than its checkpoint says: it was edited or replaced)"
            )
        with open(self.path, "ab") as handle:
            handle.truncate(offset)


def read_metrics(path: str | Path) -> list[Record]:
    """Read ``metrics.jsonl``; return its records in file order.

    The read is bounded (a regular file of at most
    :data:`~bnlab.train.runfiles.MAX_LOG_BYTES`), and every line must be a record: a JSON
    object with a string ``tag`` and a non-negative integer ``step``
    (:func:`~bnlab.train.runfiles.check_record`). A torn last line (a process killed
    mid-write: not JSON) is skipped with a warning. If a record appears more than once for
    the same ``(phase, tag, step)`` (a phase re-run after a crash between phases), the last
    one wins and keeps the position of the first.

    Raises:
        RunFileError: (a ``ValueError``) not a regular file, too large, not UTF-8, or a
            line other than a torn last one that is not a record (the file is corrupt).
    """
    path = Path(path)
    data = read_bounded(path, MAX_LOG_BYTES)
    if data is None:
        return []
    return parse_metrics(data, path)


def parse_metrics(data: bytes, path: str | Path = "metrics.jsonl") -> list[Record]:
    """The records of a metrics log's content ``data`` (see :func:`read_metrics`; ``path``
    names it in messages).

    Raises:
        RunFileError: not UTF-8, or a line other than a torn last one that is not a record.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"{path}:{data.count(NEWLINE, 0, exc.start) + 1}"
        found = f"byte {data[exc.start]:#04x}"
        raise RunFileError(where, f"expected UTF-8 text, found {found}") from None
    lines = text.split("\n")
    out: dict[tuple[Any, ...], Record] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number >= len(lines) - 1:
                warnings.warn(f"{path}: skipping a torn last line ({exc})", stacklevel=2)
                continue
            raise RunFileError(
                f"{path}:{number}", f"expected a JSON record, found {line[:80]!r}"
            ) from None
        except (RecursionError, ValueError) as exc:
            raise RunFileError(f"{path}:{number}", f"expected a JSON record ({exc})") from None
        reason = check_record(record)
        if reason is not None:
            raise RunFileError(f"{path}:{number}", f"expected a metrics record: {reason}")
        key = (record.get("phase"), record["tag"], record["step"])
        out[key] = record
    return list(out.values())


def is_finite(value: Any) -> bool:
    """Return whether ``value`` is a finite number (``False`` for NaN, inf and non-numbers)."""
    return isinstance(value, int | float) and math.isfinite(value)
