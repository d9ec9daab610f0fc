"""The run files' schema: what each file of a run directory holds, checked in one place.

Every reader of a run directory (the runner before a resume or a skip, the report, the
doctor) goes through these loaders. A read is bounded: only a regular file is opened (a
FIFO would block, ``/dev/zero`` never ends), and one larger than its cap is refused before
it is read. A file that is not JSON, or JSON of the wrong shape (a metrics line ``5``, a
record without ``step``, ``"seed": "zero"``, ``metrics: [1]``, ``status: "failed"``), raises
:class:`RunFileError` naming the file and what was wrong, never an error from deep inside
a reader. Fields a file may hold beyond those listed here are kept as they are.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.train.errors import RunFilesError

__all__ = [
    "CONFIG",
    "DATA",
    "ENV",
    "FAILED",
    "MAX_DOCUMENT_BYTES",
    "MAX_LOG_BYTES",
    "NOT_RUN",
    "RESULT",
    "Document",
    "Field",
    "RunFileError",
    "check_record",
    "file_kind",
    "parse_json",
    "read_bounded",
    "read_document",
]

#: Cap of a JSON file of a run (config, env, data, result, failed): they hold a few KB.
MAX_DOCUMENT_BYTES = 16 * 2**20
#: Cap of ``metrics.jsonl``: a full sigmoid-mlp run (40,000 steps) logs about 4 MB.
MAX_LOG_BYTES = 128 * 2**20


class RunFileError(RunFilesError):
    """A run file that is missing where it must exist, not a regular file, too large, not
    JSON or of the wrong shape.

    Attributes:
        path: the file.
        reason: what was wrong (the message is ``"<path>: <reason>"``).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(path: str | Path) -> str | None:
    """``None`` when ``path`` is absent or a regular file (a link to one included);
    otherwise what it is instead (``"a FIFO"``, ``"a character device"``, ``"a broken
    symbolic link"``, ...)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: str | Path, limit: int) -> bytes | None:
    """The content of the regular file ``path``, or ``None`` when it does not exist.

    Nothing but a regular file is opened (checked before and after opening, without
    blocking), and a file larger than ``limit`` bytes is refused before it is read.

    Raises:
        RunFileError: not a regular file, or larger than ``limit``.
        OSError: the file could not be read (permissions, I/O error).
    """
    kind = file_kind(path)
    if kind is not None:
        raise RunFileError(path, f"expected a regular file, found {kind}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the two checks
            raise RunFileError(path, "expected a regular file, found something else")
        if info.st_size > limit:
            raise RunFileError(path, f"expected at most {limit} bytes, found {info.st_size} bytes")
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise RunFileError(path, f"expected at most {limit} bytes, found more")
    return data


def parse_json(data: bytes, path: str | Path) -> Any:
    """Parse ``data`` (UTF-8 JSON; ``NaN``/``Infinity`` tokens allowed, as bnlab writes them).

    Raises:
        RunFileError: not UTF-8, not JSON, or nested too deeply to parse.
    """
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        found = f"byte {data[exc.start]:#04x}"
        raise RunFileError(path, f"expected UTF-8 text, found {found}") from None
    except json.JSONDecodeError as exc:
        reason = f"expected a JSON document, found invalid JSON ({exc})"
        raise RunFileError(path, reason) from None
    except (RecursionError, ValueError) as exc:  # deep nesting; an integer of 5000 digits
        reason = f"expected a JSON document, found one bnlab cannot read ({exc})"
        raise RunFileError(path, reason) from None


# -- checks: each returns None when the value is fine, else what was wrong ---------------
Check = Callable[[Any], "str | None"]


def _found(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if _plain(value) else repr(value)
    return f"{type(value).__name__} {text[:60]}"


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, found {_found(value)}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, found {_found(value)}"


def count(value: Any) -> str | None:
    """A non-negative integer (a seed, a step, a size)."""
    if _is_int(value) and value >= 0:
        return None
    return f"expected a non-negative integer, found {_found(value)}"


def number(value: Any) -> str | None:
    """Any number (NaN and infinities included: a diverged run keeps its evidence)."""
    return None if _is_number(value) else f"expected a number, found {_found(value)}"


def an_object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"expected a JSON object, found {_found(value)}"


def a_list(value: Any) -> str | None:
    return None if isinstance(value, list) else f"expected a JSON list, found {_found(value)}"


def nullable(check: Check) -> Check:
    def inner(value: Any) -> str | None:
        return None if value is None else check(value)

    return inner


def equal_to(expected: Any) -> Check:
    def inner(value: Any) -> str | None:
        if value == expected and type(value) is type(expected):
            return None
        return f"expected {json.dumps(expected)}, found {_found(value)}"

    return inner


def numbers(value: Any) -> str | None:
    """An object of numbers (``{"test_accuracy": 0.98}``)."""
    if not isinstance(value, dict):
        return f"expected an object of numbers, found {_found(value)}"
    for key, item in value.items():
        if not _is_number(item):
            return f"expected an object of numbers, found {key!r}: {_found(item)}"
    return None


def objects_with(schema: Mapping[str, Field]) -> Check:
    """A list of objects, each checked against ``schema``."""

    def inner(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list, found {_found(value)}"
        for i, item in enumerate(value):
            reason = _check_fields(item, schema)
            if reason is not None:
                return f"item {i}: {reason}"
        return None

    return inner


@dataclass(frozen=True)
class Field:
    """A field of a run file: its check, and whether it must be present."""

    check: Check
    required: bool = False


def _check_fields(value: Any, fields: Mapping[str, Field]) -> str | None:
    if not isinstance(value, dict):
        return f"expected a JSON object, found {type(value).__name__}"
    for key, spec in fields.items():
        if key not in value:
            if spec.required:
                return f"expected a field {key!r}, found none"
            continue
        reason = spec.check(value[key])
        if reason is not None:
            return f"{key}: {reason}"
    return None


@dataclass(frozen=True)
class Document:
    """The schema of one JSON file of a run (or of an experiment's directory)."""

    name: str
    fields: Mapping[str, Field]

    def check(self, value: Any, path: str | Path) -> dict[str, Any]:
        """``value`` as a dict when it has this schema's shape.

        Raises:
            RunFileError: the first field that is missing or of the wrong shape.
        """
        reason = _check_fields(value, self.fields)
        if reason is not None:
            raise RunFileError(path, reason)
        return dict(value)


def read_document(path: str | Path, schema: Document) -> dict[str, Any] | None:
    """Read the JSON file ``path`` (bounded, see :func:`read_bounded`) and check it
    against ``schema``; ``None`` when the file does not exist.

    Raises:
        RunFileError: not a regular file, too large, not JSON, or of the wrong shape.
        OSError: the file could not be read.
    """
    data = read_bounded(path, MAX_DOCUMENT_BYTES)
    if data is None:
        return None
    return schema.check(parse_json(data, path), path)


#: ``config.json``: the run's identity and its resolved config (written first).
CONFIG = Document(
    "config.json",
    {
        "experiment": Field(string, required=True),
        "variant": Field(string, required=True),
        "seed": Field(count, required=True),
        "quick": Field(boolean, required=True),
        "config": Field(an_object, required=True),
        "config_type": Field(string),
        "data_parallel": Field(an_object),
    },
)

#: ``result.json``: the completion marker (written last).
RESULT = Document(
    "result.json",
    {
        "status": Field(equal_to("complete"), required=True),
        "metrics": Field(numbers, required=True),
        "wall_time_s": Field(number),
        "sessions": Field(count),
        "torch_threads": Field(count),
        "time_s": Field(numbers),
    },
)

#: ``failed.json``: the last attempt's error.
FAILED = Document(
    "failed.json",
    {
        "error": Field(string),
        "message": Field(string),
        "traceback": Field(string),
        "time_utc": Field(string),
    },
)

#: ``env.json``: where the run ran (versions, threads, git), shown as text.
ENV = Document(
    "env.json",
    {"git": Field(nullable(an_object)), "torch_threads": Field(count), "resumes": Field(a_list)},
)

_DATA_FILE = {
    "name": Field(string, required=True),
    "size": Field(count, required=True),
    "sha256": Field(string, required=True),
    "path": Field(string),
    "gzip": Field(boolean),
}

#: ``data.json``: the data's provenance (see :mod:`bnlab.data.provenance`).
DATA = Document(
    "data.json",
    {
        "dataset": Field(nullable(string)),
        "published": Field(nullable(boolean)),
        "files": Field(objects_with(_DATA_FILE)),
        "fingerprint": Field(nullable(string)),
        "directory": Field(nullable(string)),
        "origin": Field(nullable(string)),
        "note": Field(string),
    },
)

#: ``<experiment>/not-run.json``: why an experiment did not run.
NOT_RUN = Document(
    "not-run.json",
    {"reason": Field(string), "error": Field(string), "time_utc": Field(string)},
)

_RECORD = {
    "tag": Field(string, required=True),
    "step": Field(count, required=True),
    "phase": Field(nullable(string)),
}


def check_record(value: Any) -> str | None:
    """Why ``value`` is not a metrics record (an object with a string ``tag``, a
    non-negative integer ``step`` and, optionally, a string ``phase``); ``None`` if it is.

    >>> check_record({"phase": "train", "tag": "train", "step": 3, "loss": 0.5}) is None
    True
    >>> check_record(5)
    'expected a JSON object, found int'
    >>> print(check_record({"tag": "train", "step": -1}))
    step: expected a non-negative integer, found int -1
    """
    return _check_fields(value, _RECORD)
