"""Reading run directories back: runs grouped by experiment and variant, values over seeds.

This is all the report knows about training: ``runs/<experiment>/<variant>/seed-<k>/``
with ``config.json``, ``env.json``, ``data.json``, ``metrics.jsonl`` and (when finished)
``result.json``, plus ``runs/<experiment>/not-run.json`` for an experiment that could not
start. Every file is read through the schema of :mod:`bnlab.train.runfiles` (regular files
only, a size cap, checked shapes). A run whose files cannot be read or trusted is kept with
status ``"corrupt"`` and the reason (never dropped, never counted, never fatal for the
others): a file of the wrong shape, a missing ``config.json``, a copy under another seed
directory, an edited ``quick`` flag. A torn last line of a log is skipped.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab.report.stats import Summary, summarize
from bnlab.train.metrics import Record, read_metrics
from bnlab.train.rundir import RunDir
from bnlab.train.runfiles import NOT_RUN as NOT_RUN_FILE
from bnlab.train.runfiles import read_document

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


#: Files a run directory holds before its ``config.json`` (the runner writes them first): a
#: directory with nothing else was stopped before it started.
_BEFORE_CONFIG = frozenset({RunDir.DATA, RunDir.ENV})


def _identity_problem(config: dict[str, Any], experiment: str, label: str, seed: int) -> str:
    """Why ``config.json`` names another run than the directory it lies in ("" if none)."""
    named = (config["experiment"], config["variant"], config["seed"])
    variant = str(config["variant"])
    same_variant = label == variant or label.startswith(f"{variant}@")  # bn@2proc-syncbn
    if config["experiment"] == experiment and same_variant and config["seed"] == seed:
        return ""
    return (
        f"{RunDir.CONFIG}: names the run {named[0]}/{named[1]}/seed-{named[2]}, but it lies "
        f"in {experiment}/{label}/seed-{seed} (copied or moved): move it back or remove it"
    )


def _read_run(path: Path, experiment: str, label: str, spec: Any | None = None) -> RunRecord | None:
    """The run in ``path`` (``experiment/label/seed-<k>``); ``None`` only for a directory
    that holds nothing of a run.

    Every file goes through the schema of :mod:`bnlab.train.runfiles` (bounded reads of
    regular files, checked shapes). A run whose files cannot be trusted is kept with its
    :attr:`RunRecord.problem`: a file of the wrong shape, a ``config.json`` that is missing
    beside other run files or that names another run than its directory (a copy), a
    directory name bnlab does not write (``seed-00``), or a config the experiment's spec
    finds inconsistent (``spec.stored_config_problem``, e.g. ``quick: false`` edited into
    a ``--quick`` run).
    """
    run = RunDir(path)
    match = _SEED_DIR.match(path.name)
    seed = int(match.group(1)) if match else 0
    record = RunRecord(
        path=path,
        experiment=experiment,
        variant=label,
        seed=seed,
        config={},
        quick=False,
        env={},
        result=None,
        failure=None,
    )
    problems = []
    if path.name != f"seed-{seed}":
        problems.append(
            f"{path.name}: not a run directory name bnlab writes (seed-{seed}); a copy of "
            f"seed-{seed} would count it twice: rename or remove it"
        )
    try:
        entries = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    except OSError as exc:
        entries = set()
        problems.append(f"cannot list the directory ({exc.strerror or exc})")
    config: dict[str, Any] | None = None
    if not os.path.lexists(run.config_path):
        if not entries - _BEFORE_CONFIG and not problems:
            return None if not entries else record  # stopped before it started: incomplete
        problems.append(
            f"{run.config_path}: expected a file, found none beside the run's other files "
            f"({', '.join(sorted(entries - _BEFORE_CONFIG))})"
        )
    else:
        try:
            config = run.read_config()
        except (ValueError, OSError) as exc:
            problems.append(str(exc))
    if config is not None:
        record.variant = config["variant"]
        record.seed = config["seed"]
        record.config = dict(config["config"])
        record.quick = config["quick"]
        identity = _identity_problem(config, experiment, label, seed)
        if identity:
            problems.append(identity)
        check = getattr(spec, "stored_config_problem", None)
        reason = check(config) if callable(check) and not identity else None
        if reason:
            problems.append(f"{run.config_path}: {reason}")
    readers: tuple[tuple[str, Any], ...] = (
        ("result", run.read_result if os.path.lexists(run.result_path) else lambda: None),
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


def load_results(
    runs_dir: str | Path, experiments: Mapping[str, Any] | None = None
) -> dict[str, ExperimentResults]:
    """Read every experiment under ``runs_dir``; return them by name (sorted).

    Args:
        experiments: the registered specs by name (optional): a spec with a
            ``stored_config_problem(config_json) -> str | None`` method judges each run's
            ``config.json`` against the experiment's own configs (see :func:`_read_run`).

    Raises:
        FileNotFoundError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a runs directory (bnlab run --out), found none")
    specs = experiments or {}
    found: dict[str, ExperimentResults] = {}
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        results = ExperimentResults(exp_dir.name)
        not_run = exp_dir / NOT_RUN
        try:
            results.not_run = read_document(not_run, NOT_RUN_FILE)
        except (ValueError, OSError) as exc:
            results.not_run = {"reason": f"{not_run} is unreadable ({exc})"}
        for variant_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            seed_dirs = [p for p in variant_dir.iterdir() if p.is_dir() and _SEED_DIR.match(p.name)]
            spec = specs.get(exp_dir.name)
            runs = [_read_run(p, exp_dir.name, variant_dir.name, spec) for p in seed_dirs]
            kept = [r for r in runs if r is not None]
            if kept:
                results.runs[variant_dir.name] = sorted(kept, key=lambda r: (r.seed, r.path.name))
        if results.runs or results.not_run is not None:
            found[exp_dir.name] = results
    return found
