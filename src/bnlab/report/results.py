"""Reading run directories back: runs grouped by experiment and variant, values over seeds.

This is all the report knows about training: ``runs/<experiment>/<variant>/seed-<k>/``
with ``config.json``, ``env.json``, ``data.json``, ``metrics.jsonl`` and (when finished)
``result.json``, plus ``runs/<experiment>/not-run.json`` for an experiment that could not
start. A run whose files cannot be read is kept with status ``"corrupt"`` and the reason
(never dropped, never fatal for the others); a torn last line of a log is skipped.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab.report.stats import Summary, summarize
from bnlab.train.io import read_json
from bnlab.train.metrics import Record, read_metrics
from bnlab.train.rundir import RunDir

__all__ = ["NOT_RUN", "ExperimentResults", "RunRecord", "load_results"]

#: File in ``runs/<experiment>/`` recording why the experiment did not run.
NOT_RUN = "not-run.json"

_SEED_DIR = re.compile(r"^seed-(\d+)$")


@dataclass
class RunRecord:
    """One run directory, read from disk.

    Attributes:
        path: the directory.
        experiment, variant, seed: its identity (from ``config.json``).
        config: the resolved config (``config.json``'s ``config``).
        quick: whether it was a ``--quick`` run.
        env: ``env.json``.
        result: ``result.json`` (``None`` while unfinished).
        failure: ``failed.json`` (``None`` unless the last attempt raised).
        data: ``data.json``, the data's provenance (``None`` for runs made before bnlab
            recorded it).
        problem: why the run's files cannot be trusted (``None`` when they can); the log is
            checked on first use of :attr:`status` or :attr:`log`.
    """

    path: Path
    experiment: str
    variant: str
    seed: int
    config: dict[str, Any]
    quick: bool
    env: dict[str, Any]
    result: dict[str, Any] | None
    failure: dict[str, Any] | None
    data: dict[str, Any] | None = None
    problem: str | None = None
    _log: list[Record] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """``"corrupt"`` (see :attr:`problem`), ``"complete"``, ``"failed"`` or
        ``"incomplete"`` (interrupted or running)."""
        self._read_log()
        if self.problem is not None:
            return "corrupt"
        if self.result is not None:
            return "complete"
        return "failed" if self.failure is not None else "incomplete"

    @property
    def torch_threads(self) -> Any:
        """The torch threads the run trained on: ``result.json``'s ``torch_threads`` (set by
        the runner from the config's ``num_threads``), else ``env.json``'s (the process's
        count when the run started, which older runs record only), else ``"?"``."""
        if self.result is not None and "torch_threads" in self.result:
            return self.result["torch_threads"]
        return self.env.get("torch_threads", "?")

    def _read_log(self) -> list[Record]:
        if self._log is None:
            try:
                with warnings.catch_warnings():
                    # A torn last line (a process killed mid-write) is expected; it is skipped.
                    warnings.simplefilter("ignore")
                    self._log = read_metrics(self.path / RunDir.METRICS)
            except (ValueError, OSError) as exc:
                self._log = []
                if self.problem is None:
                    self.problem = str(exc)
        return self._log

    def metric(self, key: str) -> float | None:
        """A final metric from ``result.json`` (``None`` if absent or unfinished)."""
        if self.result is None:
            return None
        value = self.result.get("metrics", {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    @property
    def log(self) -> list[Record]:
        """The records of ``metrics.jsonl`` (read once; empty when the log is corrupt)."""
        return self._read_log()

    @property
    def data_label(self) -> str:
        """The data in a few words: ``"mnist (published)"``, ``"mnist: NOT the published
        data"``, ``"unknown (not recorded)"``, or ``"–"`` when none is loaded up front."""
        if self.data is None:
            return "unknown (not recorded)"
        name = self.data.get("dataset")
        if not name:
            return "–"
        published = self.data.get("published")
        if published is True:
            return f"{name} (published)"
        if published is False:
            return f"{name}: NOT the published data"
        return f"{name} (no published digests to compare)"

    def series(self, tag: str, key: str, phase: str | None = None) -> dict[int, float]:
        """``{step: value}`` of the records with ``tag`` (and ``phase``) that hold ``key``."""
        out: dict[int, float] = {}
        for record in self.log:
            if record.get("tag") != tag or (phase is not None and record.get("phase") != phase):
                continue
            value = record.get(key)
            if isinstance(value, int | float):
                out[int(record["step"])] = float(value)
        return out


@dataclass
class ExperimentResults:
    """The runs of one experiment, by variant (each list sorted by seed).

    Attributes:
        name: the experiment's name.
        runs: variant name -> its runs.
        not_run: the content of ``not-run.json`` (why the experiment did not run), if any.
    """

    name: str
    runs: dict[str, list[RunRecord]] = field(default_factory=dict)
    not_run: dict[str, Any] | None = None

    @property
    def variants(self) -> list[str]:
        return list(self.runs)

    def all_runs(self) -> list[RunRecord]:
        return [run for runs in self.runs.values() for run in runs]

    def data_note(self) -> str | None:
        """One sentence naming the data the runs read, marking any not made on the published
        data (``None`` without runs)."""
        runs = self.all_runs()
        if not runs:
            return None
        labels: dict[str, int] = {}
        for run in runs:
            labels[run.data_label] = labels.get(run.data_label, 0) + 1
        if list(labels) == ["–"]:
            return None
        parts = [f"{label} ({n} run{'s' if n != 1 else ''})" for label, n in labels.items()]
        text = "Data: " + "; ".join(parts) + "."
        if any(run.data is not None and run.data.get("published") is False for run in runs):
            dirs = sorted(
                {
                    str(run.data.get("directory"))
                    for run in runs
                    if run.data is not None and run.data.get("published") is False
                }
            )
            text += (
                " Runs marked NOT the published data were trained on other files ("
                + ", ".join(dirs)
                + "): their numbers say nothing about the published data set."
            )
        return text

    def complete(self, variant: str) -> list[RunRecord]:
        """The finished runs of ``variant`` (an unknown variant has none)."""
        return [run for run in self.runs.get(variant, []) if run.status == "complete"]

    def values(self, variant: str, key: str) -> list[float]:
        """The final metric ``key`` of every finished run of ``variant``, by seed."""
        out = []
        for run in self.complete(variant):
            value = run.metric(key)
            if value is not None:
                out.append(value)
        return out

    def summary(self, variant: str, key: str) -> Summary | None:
        """:func:`summarize` of :meth:`values`."""
        return summarize(self.values(variant, key))

    def values_at(self, variant: str, tag: str, key: str, step: int) -> list[float]:
        """The logged ``key`` of records ``tag`` at ``step``, one per finished run that has it."""
        out = []
        for run in self.complete(variant):
            value = run.series(tag, key).get(step)
            if value is not None:
                out.append(value)
        return out

    def curve(
        self, variant: str, tag: str, key: str, *, phase: str | None = None, smooth: int = 1
    ) -> tuple[list[int], list[list[float]]]:
        """Steps logged by every finished run of ``variant``, and each run's values there.

        With ``smooth > 1`` each run's series is first replaced by its trailing moving
        average over ``smooth`` consecutive records (the first ``smooth - 1`` are dropped).

        Returns:
            ``(steps, per_run)`` where ``per_run[i][j]`` is run ``i``'s value at ``steps[j]``.
        """
        series = [run.series(tag, key, phase) for run in self.complete(variant)]
        series = [s for s in series if s]
        if not series:
            return [], []
        if smooth > 1:
            series = [_moving_average(s, smooth) for s in series]
        common = sorted(set.intersection(*(set(s) for s in series)))
        return common, [[s[step] for step in common] for s in series]


def _moving_average(series: dict[int, float], window: int) -> dict[int, float]:
    steps = sorted(series)
    values = [series[s] for s in steps]
    return {
        steps[i]: math.fsum(values[i - window + 1 : i + 1]) / window
        for i in range(window - 1, len(values))
    }


def _read_run(path: Path) -> RunRecord | None:
    """The run in ``path``; ``None`` only when it holds no ``config.json`` (not a run)."""
    run = RunDir(path)
    if not run.config_path.is_file():
        return None
    match = _SEED_DIR.match(path.name)
    record = RunRecord(
        path=path,
        experiment=path.parent.parent.name,
        variant=path.parent.name,
        seed=int(match.group(1)) if match else 0,
        config={},
        quick=False,
        env={},
        result=None,
        failure=None,
    )
    problems = []
    try:
        config = run.read_config()
    except (ValueError, OSError) as exc:
        problems.append(str(exc))
    else:
        record.experiment = str(config.get("experiment", record.experiment))
        record.variant = str(config.get("variant", record.variant))
        record.seed = int(config.get("seed", record.seed))
        record.config = dict(config.get("config", {}))
        record.quick = bool(config.get("quick", False))
    readers: tuple[tuple[str, Any], ...] = (
        ("result", run.read_result if run.is_complete else lambda: None),
        ("failure", run.read_failure),
        ("env", run.read_env),
        ("data", run.read_data),
    )
    for name, read in readers:
        try:
            setattr(record, name, read())
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    if problems:
        record.problem = "; ".join(problems)
    return record


def load_results(runs_dir: str | Path) -> dict[str, ExperimentResults]:
    """Read every experiment under ``runs_dir``; return them by name (sorted).

    Raises:
        FileNotFoundError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a runs directory (bnlab run --out), found none")
    found: dict[str, ExperimentResults] = {}
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        results = ExperimentResults(exp_dir.name)
        not_run = exp_dir / NOT_RUN
        if not_run.is_file():
            try:
                results.not_run = dict(read_json(not_run))
            except ValueError:
                results.not_run = {"reason": f"{not_run} is unreadable"}
        for variant_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            seed_dirs = [p for p in variant_dir.iterdir() if p.is_dir() and _SEED_DIR.match(p.name)]
            runs = [r for r in (_read_run(p) for p in seed_dirs) if r is not None]
            if runs:
                results.runs[variant_dir.name] = sorted(runs, key=lambda r: r.seed)
        if results.runs or results.not_run is not None:
            found[exp_dir.name] = results
    return found
