"""The run directory: the contract between training and reporting.

``runs/<experiment>/<variant>/seed-<k>/`` holds ``config.json`` (the resolved config),
``env.json`` (versions, threads, git revision), ``data.json`` (the data it read: files,
digests, whether they are the published data), ``metrics.jsonl``,
``checkpoints/<phase>.pt``, ``artefacts/`` and, written last, ``result.json``: its presence
marks a finished run. A run that raised leaves ``failed.json`` (the error) and can be resumed.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

from bnlab.train.checkpoint import Checkpoint
from bnlab.train.errors import RunFilesError
from bnlab.train.io import write_bytes_atomic, write_json_atomic
from bnlab.train.metrics import MetricsLog, Record, parse_metrics, read_metrics
from bnlab.train.runfiles import (
    CONFIG,
    DATA,
    ENV,
    FAILED,
    MAX_LOG_BYTES,
    RESULT,
    RunFileError,
    file_kind,
    read_bounded,
    read_document,
)


class RunDir:
    """Paths and atomic writers for one run directory.

    Args:
        path: the directory (created on the first write).

    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.is_complete
    False
    >>> run.write_result({"test_accuracy": 0.9})
    >>> run.is_complete, run.read_result()["metrics"]["test_accuracy"]
    (True, 0.9)
    """

    CONFIG = "config.json"
    ENV = "env.json"
    DATA = "data.json"
    METRICS = "metrics.jsonl"
    RESULT = "result.json"
    FAILED = "failed.json"
    CHECKPOINTS = "checkpoints"
    ARTEFACTS = "artefacts"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._metrics: MetricsLog | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths ----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def env_path(self) -> Path:
        return self.path / self.ENV

    @property
    def data_path(self) -> Path:
        return self.path / self.DATA

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def result_path(self) -> Path:
        return self.path / self.RESULT

    @property
    def failed_path(self) -> Path:
        return self.path / self.FAILED

    def checkpoint_path(self, phase: str) -> Path:
        """``checkpoints/<phase>.pt`` (one checkpoint per training phase, overwritten in place)."""
        if not phase or "/" in phase or phase.startswith("."):
            raise ValueError(f"a phase name must be a plain file name; got {phase!r}")
        return self.path / self.CHECKPOINTS / f"{phase}.pt"

    @property
    def artefacts(self) -> Path:
        """The artefacts directory (created on access)."""
        directory = self.path / self.ARTEFACTS
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    # -- state ----------------------------------------------------------------------------
    @property
    def is_complete(self) -> bool:
        """Whether the run finished (``result.json`` exists)."""
        return self.result_path.is_file()

    @property
    def metrics(self) -> MetricsLog:
        """The metrics log writer of this run (one instance per :class:`RunDir`)."""
        if self._metrics is None:
            self._metrics = MetricsLog(self.metrics_path)
        return self._metrics

    # -- writers --------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``<run>/<name>`` atomically."""
        write_json_atomic(self.path / name, obj)

    def write_artefact(self, name: str, data: bytes) -> Path:
        """Write ``data`` to ``artefacts/<name>`` atomically; return the path."""
        target = self.artefacts / name
        write_bytes_atomic(target, data)
        return target

    def write_result(self, metrics: dict[str, Any], **info: Any) -> None:
        """Write ``result.json`` (final metrics plus ``info``): the completion marker, so last."""
        write_json_atomic(self.result_path, {"status": "complete", "metrics": metrics, **info})

    # -- readers ---------------------------------------------------------------------------
    # Every reader goes through the schema of bnlab.train.runfiles: a bounded read of a
    # regular file, checked for its shape; RunFileError (a ValueError) names the file and
    # what was wrong.
    def read_config(self) -> dict[str, Any]:
        """``config.json`` (:data:`~bnlab.train.runfiles.CONFIG`).

        Raises:
            RunFileError: missing, unreadable or of the wrong shape (the message names the
                file).
        """
        return _required(read_document(self.config_path, CONFIG), self.config_path)

    def read_env(self) -> dict[str, Any]:
        """``env.json`` (``{}`` when absent)."""
        return read_document(self.env_path, ENV) or {}

    def read_result(self) -> dict[str, Any]:
        """``result.json`` (:data:`~bnlab.train.runfiles.RESULT`: ``status`` ``"complete"``,
        ``metrics`` an object of numbers).

        Raises:
            RunFileError: missing, unreadable or of the wrong shape (the message names the
                file).
        """
        return _required(read_document(self.result_path, RESULT), self.result_path)

    def read_failure(self) -> dict[str, Any] | None:
        """``failed.json`` (``None`` when absent)."""
        return read_document(self.failed_path, FAILED)

    def read_metrics(self) -> list[Record]:
        return read_metrics(self.metrics_path)

    def read_data(self) -> dict[str, Any] | None:
        """``data.json`` (the data the run read), or ``None`` for a run made before bnlab
        recorded it."""
        return read_document(self.data_path, DATA)

    def irregular_files(self) -> list[str]:
        """``"<path>: expected a regular file, found a FIFO"`` for each file of the run that
        exists but is not a regular file (its JSON files and its log): reading a FIFO, or
        appending to it, would block; a device may never end."""
        names = (self.CONFIG, self.ENV, self.DATA, self.METRICS, self.RESULT, self.FAILED)
        found = []
        for name in names:
            kind = file_kind(self.path / name)
            if kind is not None:
                found.append(f"{self.path / name}: expected a regular file, found {kind}")
        return found

    # -- resuming -------------------------------------------------------------------------
    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed process left behind
        (``.<name>.*.tmp`` anywhere in the run); return them. Call only under the run's lock.
        """
        found = sorted(p for p in self.path.rglob(".*.tmp") if p.is_file())
        for p in found:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return found

    def checkpoint_offset(self) -> int:
        """The size the metrics log had at the latest checkpoint (the largest offset among
        ``checkpoints/*.pt``), or 0 when there is none.

        Raises:
            CheckpointError: a checkpoint cannot be read (the message says ``--restart``).
        """
        directory = self.path / self.CHECKPOINTS
        files = sorted(directory.glob("*.pt")) if directory.is_dir() else []
        return max((Checkpoint.load(f).metrics_offset for f in files), default=0)

    def cut_back_metrics(self) -> tuple[int, int]:
        """Cut ``metrics.jsonl`` back to the latest checkpoint (to empty before the first),
        atomically: what a resumed run logs next then continues the log exactly as an
        uninterrupted run would have, with no duplicate, lost or torn record.

        Returns:
            ``(size before, size after)`` in bytes.

        Raises:
            CheckpointError: a checkpoint cannot be read.
            RunFilesError: the log is shorter than the checkpoint says (edited or replaced),
                or what it keeps is not a log of records (then nothing is changed).
        """
        offset = self.checkpoint_offset()
        path = self.metrics_path
        content = read_bounded(path, MAX_LOG_BYTES) or b""
        size = len(content)
        if size < offset:
            raise RunFilesError(
                f"{path} holds {size} bytes but its checkpoint was taken at {offset} bytes: the "
                "log was edited or replaced; pass --restart to train this run again"
            )
        kept = content[:offset]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the kept part ends at a record: nothing torn
                parse_metrics(kept, path)
        except (RunFilesError, UserWarning) as exc:
            raise RunFilesError(
                f"{exc}; the log a resumed run would continue is damaged: pass --restart to "
                "train this run again, or --out DIR"
            ) from None
        if size > offset:
            write_bytes_atomic(path, kept)  # a kill during the cut leaves the old log whole
        return size, offset


def _required(value: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    if value is None:
        raise RunFileError(path, "expected a file, found none")
    return value
