"""The engine: run an experiment's variants over seeds into run directories.

For each (variant, seed) it takes the run directory's lock (one process per run), resolves
the config, writes ``config.json``, ``env.json`` and ``data.json`` (the data's provenance),
calls the experiment's ``run`` (which resumes from its checkpoints), and writes
``result.json`` last. A finished run is skipped only when its config and data fingerprint
match; an interrupted one resumes after its metrics log is cut back to the last checkpoint
and leftover temporary files are removed; a run directory holding a different config or
data is refused (or discarded with ``restart``). :func:`run_group` does the same for the
seeds of one variant and trains the unfinished ones together where the experiment offers
``run_group`` (one at a time after any error of the group).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bnlab.errors import BnlabError
from bnlab.experiments.base import ExperimentSpec, RunContext, config_to_dict
from bnlab.report.results import NOT_RUN
from bnlab.train import distributed as data_parallel
from bnlab.train.env import capture_environment, process_git_revision
from bnlab.train.errors import CheckpointError, RunConflictError, RunFilesError
from bnlab.train.io import write_json_atomic
from bnlab.train.lock import RunLockedError, run_lock
from bnlab.train.memory import keep_freed_memory
from bnlab.train.progress import progress_enabled
from bnlab.train.rundir import RunDir
from bnlab.train.timing import TimeLedger, recording

__all__ = [
    "ExperimentNotRunError",
    "RunOutcome",
    "data_provenance",
    "group_size_limit",
    "load_experiment_data",
    "numerics",
    "run_experiment",
    "run_group",
    "run_one",
    "seed_list",
    "threads",
]

Log = Callable[[str], None]


class ExperimentNotRunError(BnlabError):
    """An experiment that could not start (its data are missing); recorded in ``not-run.json``."""


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one (variant, seed).

    Attributes:
        status: ``"done"`` (trained now), ``"skipped"`` (already finished) or ``"failed"``.
        metrics: the final metrics (empty when failed).
        error: the error message when failed.
        wall_time_s: wall time of this call.
    """

    experiment: str
    variant: str
    seed: int
    path: Path
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float = 0.0


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``K`` -> ``[0, ..., K-1]``; an explicit list is checked and returned.

    Raises:
        ValueError: ``K < 1``, a negative seed, or a repeated seed.
    """
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"the number of seeds must be >= 1; got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct non-negative integers; got {list(seeds)}")
    return out


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: as they are), then restore.

    The MNIST MLPs take tens of thousands of steps on (60, 784) batches; on two shared
    cores one thread avoids the OpenMP hand-off that costs more than the arithmetic, while
    the image experiments' convolutions are large enough for two.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def numerics(flush_denormal: bool) -> Iterator[None]:
    """Run the block with denormal floats flushed to zero when asked (as TF's CPU kernels do)."""
    # TF's CPU kernels flush denormals to zero; without it a deep ReLU net whose
    # activations vanish also runs an order of magnitude slower.
    previous = torch.set_flush_denormal(flush_denormal)
    try:
        yield
    finally:
        # set_flush_denormal returns whether the CPU supports it, not the old setting;
        # bnlab never runs with it on outside an experiment, so switch it off again.
        if previous:
            torch.set_flush_denormal(False)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _resolved(
    spec: ExperimentSpec[Any, Any], variant: str, seed: int, config: Any, quick: bool
) -> dict[str, Any]:
    kind = type(config)
    resolved = {
        "experiment": spec.name,
        "variant": variant,
        "seed": seed,
        "quick": quick,
        "config_type": f"{kind.__module__}.{kind.__qualname__}",
        "config": config_to_dict(config),
    }
    key = data_parallel.current().run_key()  # {} for one process
    if key:
        resolved["data_parallel"] = key
    return resolved


_NO_DATA_NOTE = "no data set loaded up front: the experiment reads its own inputs"


def data_provenance(data: Any) -> dict[str, Any]:
    """The provenance record of what ``spec.load_data`` returned (see
    :mod:`bnlab.data.provenance`): ``data.provenance``, or that of a ``Datasets`` held in
    one of its fields; otherwise a record without files or fingerprint (nothing to compare).
    """
    candidates = [data]
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        candidates += [getattr(data, f.name) for f in dataclasses.fields(data)]
    for candidate in candidates:
        provenance = getattr(candidate, "provenance", None)
        if isinstance(provenance, Mapping) and provenance:
            return dict(provenance)
    return {
        "dataset": None,
        "published": None,
        "files": [],
        "fingerprint": None,
        "note": _NO_DATA_NOTE,
    }


def describe_data(provenance: Mapping[str, Any] | None) -> str:
    """A few words on a provenance record: ``"mnist from /x (the published MNIST)"``."""
    if not provenance:
        return "unknown data (the run predates bnlab's data records)"
    if not provenance.get("dataset"):
        return str(provenance.get("note", "no data set"))
    published = {True: "the published data", False: "NOT the published data", None: ""}.get(
        provenance.get("published"), ""
    )
    where = provenance.get("directory") or "?"
    short = str(provenance.get("fingerprint") or "")[:12]
    extra = ", ".join(x for x in (published, f"fingerprint {short}" if short else "") if x)
    return f"{provenance['dataset']} from {where}" + (f" ({extra})" if extra else "")


def _check_data(run: RunDir, provenance: Mapping[str, Any]) -> str | None:
    """Why the run directory's recorded data differ from ``provenance`` (``None``: same)."""
    try:
        stored = run.read_data()
    except ValueError as exc:
        return f"its {RunDir.DATA} is unreadable ({exc})"
    if stored is None or not provenance.get("fingerprint"):
        return None  # made before data records, or nothing to compare
    if stored.get("fingerprint") == provenance.get("fingerprint"):
        return None
    return (
        f"it was trained on {describe_data(stored)}; this command reads {describe_data(provenance)}"
    )


def run_path(out_dir: str | Path, experiment: str, variant: str, seed: int) -> Path:
    """``out_dir/<experiment>/<variant>/seed-<seed>``; under data-parallel training the
    variant directory names the world size and whether BN statistics were synchronized
    (``bn@2proc-syncbn``, see :meth:`DataParallel.run_label`)."""
    label = data_parallel.current().run_label(variant)
    return Path(out_dir) / experiment / label / f"seed-{seed}"


def run_one(
    spec: ExperimentSpec[Any, Any],
    variant: str,
    seed: int,
    data: Any,
    *,
    out_dir: str | Path,
    quick: bool = False,
    progress: bool = False,
    restart: bool = False,
    overrides: Mapping[str, str] | None = None,
    is_main: bool = True,
    log: Log = _stderr,
    provenance: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Run (or resume, or skip) one seed of one variant into its run directory.

    The whole call holds the run directory's lock (:func:`bnlab.train.lock.run_lock`), so
    two processes never train one run. A finished run is skipped only if its config and
    data fingerprint match. Before a resume the metrics log is cut back to the latest
    checkpoint and temporary files of a killed write are removed, so the finished log is
    record for record the one an uninterrupted run writes.

    Args:
        provenance: the data's provenance (default :func:`data_provenance` of ``data``),
            written to ``data.json``.

    Raises:
        RunLockedError: another process is training this run (its PID in the message).
        RunConflictError: the directory holds a run with another config or other data, or
            unreadable run files, and ``restart`` is false.
        CheckpointError, RunFilesError: a resume found a corrupt checkpoint or a metrics
            log shorter than its checkpoint (the message says ``--restart``).
        Exception: whatever the experiment raised (after ``failed.json`` was written).
    """
    config = spec.config_for(variant, seed, quick=quick, overrides=overrides)
    run = RunDir(run_path(out_dir, spec.name, variant, seed))
    resolved = _resolved(spec, variant, seed, config, quick)
    provenance = dict(provenance) if provenance is not None else data_provenance(data)
    with run_lock(run.path, enabled=is_main):
        return _run_locked(
            spec,
            run,
            config,
            resolved,
            provenance,
            data,
            progress=progress,
            restart=restart,
            is_main=is_main,
            log=log,
        )


def _conflict(run: RunDir, what: str) -> RunConflictError:
    return RunConflictError(
        f"{run.path} already holds a run with {what}. Pass --restart to discard it, or --out "
        "DIR to write the new run elsewhere."
    )


@dataclass
class _Started:
    """A run whose directory :func:`_prepare` made ready to train (or resume)."""

    run: RunDir
    config: Any
    resolved: dict[str, Any]
    sessions: int
    t0: float


def _prepare(
    spec: ExperimentSpec[Any, Any],
    run: RunDir,
    config: Any,
    resolved: dict[str, Any],
    provenance: dict[str, Any],
    *,
    restart: bool,
    is_main: bool,
    log: Log,
) -> RunOutcome | _Started:
    """Under the run's lock: refuse a conflicting directory, skip a finished run (its
    outcome returned), or make the directory ready to train or resume (records written,
    metrics log cut back to the last checkpoint)."""
    # Process-wide, once, before env.json records it: glibc keeps freed memory for reuse,
    # so a step's fresh activations do not page-fault (train/memory.py).
    keep_freed_memory()
    t0 = time.perf_counter()
    if restart:
        if is_main and run.path.is_dir():
            shutil.rmtree(run.path)
    elif run.path.is_dir():
        _check_run_files(run)
        finished = _stored_run(spec, run, resolved, provenance, log)
        if finished is not None:
            return finished

    sessions = 1
    if is_main:
        if run.path.is_dir():
            _clean(run, log)
        if run.config_path.is_file():
            try:
                env = run.read_env()
            except ValueError:
                env = {"unreadable": f"{RunDir.ENV} could not be read when the run resumed"}
            env.setdefault("resumes", []).append(capture_environment())
            sessions = 1 + len(env["resumes"])
            run.write_json(RunDir.ENV, env)
            if not run.data_path.is_file():
                run.write_json(RunDir.DATA, provenance)
            log(f"{run.path}: resuming an unfinished run")
        else:
            # data.json and env.json before config.json: config.json marks a started run.
            run.write_json(RunDir.DATA, provenance)
            run.write_json(RunDir.ENV, capture_environment())
            run.write_json(RunDir.CONFIG, resolved)
        run.failed_path.unlink(missing_ok=True)
    return _Started(run, config, resolved, sessions, t0)


def _stored_run(
    spec: ExperimentSpec[Any, Any],
    run: RunDir,
    resolved: dict[str, Any],
    provenance: dict[str, Any],
    log: Log,
) -> RunOutcome | None:
    """Compare what ``run`` holds with the run asked for: refuse another config or other
    data (:class:`RunConflictError`), skip a finished run (its outcome returned); ``None``
    when there is nothing, or an unfinished run of the same config, to go on with."""
    if not run.config_path.is_file():
        return None
    try:
        stored = run.read_config()
    except ValueError as exc:
        raise _conflict(run, f"an unreadable config ({exc})") from None
    quick = resolved["quick"]
    same_dp = stored.get("data_parallel", {}) == resolved.get("data_parallel", {})
    same = stored["config"] == resolved["config"] and stored["quick"] == quick
    if not (same and same_dp):
        diff = _differences(stored["config"], resolved["config"])
        if not same_dp:
            diff.insert(
                0,
                f"data_parallel: {stored.get('data_parallel', {})!r} -> "
                f"{resolved.get('data_parallel', {})!r}",
            )
        if stored["quick"] != quick:
            diff.insert(0, f"quick: {stored['quick']!r} -> {quick!r}")
        raise _conflict(run, f"another configuration ({'; '.join(diff[:6])})")
    other_data = _check_data(run, provenance)
    if other_data is not None:
        raise _conflict(run, f"other data: {other_data}")
    if not run.is_complete:
        return None
    try:
        result = run.read_result()
    except ValueError as exc:
        raise _conflict(run, f"an unreadable result ({exc})") from None
    note = "" if run.data_path.is_file() else " (its data were not recorded)"
    log(f"{run.path}: already finished, skipped{note} (--restart to train again)")
    variant, seed = resolved["variant"], resolved["seed"]
    return RunOutcome(spec.name, variant, seed, run.path, "skipped", dict(result["metrics"]))


def _check_run_files(run: RunDir) -> None:
    """Refuse a run directory bnlab would hang on or misread: a run file that is not a
    regular file (a FIFO blocks the append, a device never ends), or the files of a
    started run without its ``config.json`` (only ``data.json`` and ``env.json`` come
    before it)."""
    irregular = run.irregular_files()
    if irregular:
        raise RunFilesError(
            f"{'; '.join(irregular)} (bnlab neither reads nor appends to such a file); pass "
            "--restart to train this run again, or --out DIR to train elsewhere"
        )
    if run.config_path.exists():
        return
    started = [
        name
        for name in (RunDir.METRICS, RunDir.RESULT, RunDir.FAILED, RunDir.CHECKPOINTS)
        if os.path.lexists(run.path / name)
    ]
    if started:
        raise RunFilesError(
            f"{run.path} holds {', '.join(started)} but no {RunDir.CONFIG}: the files of a run "
            "that cannot say what it was; pass --restart to train this run again, or --out DIR"
        )


def _clean(run: RunDir, log: Log) -> None:
    """Remove what a killed (or failed) process left: temporaries of atomic writes, and log
    records (maybe a torn line) after the last checkpoint, which the resumed steps re-log
    (what is kept must be a log of records: :class:`RunFilesError` otherwise)."""
    run.remove_temporaries()
    before, after = run.cut_back_metrics()
    if before != after:
        log(f"{run.path}: metrics log cut back to the last checkpoint ({after} bytes)")


@contextlib.contextmanager
def _training(spec: ExperimentSpec[Any, Any], config: Any) -> Iterator[TimeLedger]:
    """The settings a run trains under: denormals, the config's ``num_threads`` (the
    experiments that set one, recorded with the config; the rest run on the process's
    count), and an open time ledger (``train/timing.py``). Glibc's allocator settings
    (``train/memory.py``) are process-wide and set by :func:`_prepare`."""
    with (
        numerics(spec.flush_denormal),
        threads(getattr(config, "num_threads", None)),
        recording() as ledger,
    ):
        yield ledger


def _record_failure(run: RunDir, exc: BaseException, is_main: bool) -> None:
    if is_main:
        # A full disk may refuse this record too; the original error matters more.
        with contextlib.suppress(OSError):
            run.write_json(
                RunDir.FAILED,
                {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "traceback": traceback.format_exc(),
                    "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                },
            )


def _finish(
    spec: ExperimentSpec[Any, Any],
    started: _Started,
    metrics: Mapping[str, float],
    *,
    wall: float,
    run_threads: int,
    time_s: dict[str, float],
    is_main: bool,
) -> RunOutcome:
    """Write ``result.json`` (last) and return the run's outcome."""
    values = {str(k): float(v) for k, v in metrics.items()}
    if is_main:
        started.run.write_result(
            values,
            wall_time_s=wall,
            sessions=started.sessions,
            torch_threads=run_threads,
            time_s=time_s,
        )
    resolved = started.resolved
    return RunOutcome(
        spec.name,
        resolved["variant"],
        resolved["seed"],
        started.run.path,
        "done",
        values,
        wall_time_s=wall,
    )


def _train_one(
    spec: ExperimentSpec[Any, Any],
    started: _Started,
    data: Any,
    *,
    progress: bool,
    is_main: bool,
) -> RunOutcome:
    """Train a prepared run alone with ``spec.run``; ``failed.json`` when it raises."""
    resolved = started.resolved
    ctx = RunContext(
        started.run,
        spec.name,
        resolved["variant"],
        resolved["seed"],
        progress=progress,
        is_main=is_main,
    )
    try:
        with _training(spec, started.config) as ledger:
            run_threads = torch.get_num_threads()
            metrics = spec.run(started.config, data, ctx)
    except KeyboardInterrupt:
        raise  # interrupted, not failed: the next call resumes from the checkpoint
    except Exception as exc:
        _record_failure(started.run, exc, is_main)
        raise
    wall = time.perf_counter() - started.t0
    # Where this start's time went; "other": set-up and the measurements after training.
    return _finish(
        spec,
        started,
        metrics,
        wall=wall,
        run_threads=run_threads,
        time_s=ledger.breakdown(wall),
        is_main=is_main,
    )


def _run_locked(
    spec: ExperimentSpec[Any, Any],
    run: RunDir,
    config: Any,
    resolved: dict[str, Any],
    provenance: dict[str, Any],
    data: Any,
    *,
    progress: bool,
    restart: bool,
    is_main: bool,
    log: Log,
) -> RunOutcome:
    started = _prepare(
        spec, run, config, resolved, provenance, restart=restart, is_main=is_main, log=log
    )
    if isinstance(started, RunOutcome):
        return started
    return _train_one(spec, started, data, progress=progress, is_main=is_main)


#: Errors that stop a job (a rerun needs a decision first); never recorded as a failed run.
STOPPING_ERRORS = (
    RunConflictError,
    RunLockedError,
    RunFilesError,
    CheckpointError,
)


#: The most runs one group trains at once (each holds its run's lock, an open file).
MAX_GROUP_SIZE = 64


def group_size_limit() -> int:
    """The most runs one group holds at once: :data:`MAX_GROUP_SIZE`, lowered to half the
    file descriptors this process has left under its limit (``ulimit -n``; a quarter of
    the limit where the open ones cannot be counted); never below 2."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return MAX_GROUP_SIZE
    if soft == resource.RLIM_INFINITY:
        return MAX_GROUP_SIZE
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - no /proc
        in_use = soft * 3 // 4
    return max(2, min(MAX_GROUP_SIZE, (soft - in_use) // 2))


def run_group(
    spec: ExperimentSpec[Any, Any],
    variant: str,
    seeds: Sequence[int],
    data: Any,
    *,
    out_dir: str | Path,
    quick: bool = False,
    progress: bool = False,
    restart: bool = False,
    overrides: Mapping[str, str] | None = None,
    keep_going: bool = False,
    log: Log = _stderr,
    provenance: Mapping[str, Any] | None = None,
) -> list[RunOutcome]:
    """Run (or resume, or skip) several seeds of one variant, trained together as one
    group (``spec.run_group``) where the experiment offers it; one outcome per seed.

    Every run goes through what :func:`run_one` does (its lock, held for the whole call;
    config and data checks; a finished run skipped; ``config.json``, ``env.json``,
    ``data.json``; ``result.json`` last), and each run directory ends up as a single run
    leaves it. The unfinished runs train together when there are two or more of them, the
    experiment has ``run_group`` and no data-parallel training is on; otherwise, and after
    any error of the group (e.g. runs resumed from different steps, a NaN in one seed),
    they train one at a time from their last checkpoints, so a failure lands on its own
    run exactly as on the single path. Time is charged evenly: each grouped run's
    ``wall_time_s`` and ``time_s`` are the group's divided by the number of runs in it.
    More seeds than :func:`group_size_limit` train as several groups, one after the other,
    so the locks held at once (one open file each) stay within the process's limit.

    Args:
        keep_going: record a failed run (``failed.json``, a ``"failed"`` outcome) and go
            on with the next; otherwise re-raise the first failure.

    Raises:
        RunLockedError, RunConflictError, CheckpointError, RunFilesError: as
            :func:`run_one` (never recorded as failures, never caught by ``keep_going``).
        Exception: a run's error when not ``keep_going``.
    """
    provenance = dict(provenance) if provenance is not None else data_provenance(data)
    limit = group_size_limit()
    if len(seeds) > limit:  # in parts, each holding at most `limit` locks
        return [
            outcome
            for start in range(0, len(seeds), limit)
            for outcome in run_group(
                spec,
                variant,
                seeds[start : start + limit],
                data,
                out_dir=out_dir,
                quick=quick,
                progress=progress,
                restart=restart,
                overrides=overrides,
                keep_going=keep_going,
                log=log,
                provenance=provenance,
            )
        ]
    runs = []
    for seed in seeds:
        config = spec.config_for(variant, seed, quick=quick, overrides=overrides)
        run = RunDir(run_path(out_dir, spec.name, variant, seed))
        runs.append((seed, config, run, _resolved(spec, variant, seed, config, quick)))
    outcomes: dict[int, RunOutcome] = {}
    with contextlib.ExitStack() as locks:
        for entry in runs:
            locks.enter_context(run_lock(entry[2].path))
        todo: list[_Started] = []
        for seed, config, run, resolved in runs:
            started = _prepare(
                spec, run, config, resolved, provenance, restart=restart, is_main=True, log=log
            )
            if isinstance(started, RunOutcome):
                outcomes[seed] = started
            else:
                todo.append(started)
        single = data_parallel.current().enabled or spec.run_group is None
        grouped = len(todo) > 1 and not single
        if grouped:
            try:
                for outcome in _train_together(spec, todo, data, progress=progress):
                    outcomes[outcome.seed] = outcome
                todo = []
            except KeyboardInterrupt:
                raise
            except STOPPING_ERRORS:
                raise
            except Exception as exc:
                labels = ", ".join(f"seed-{s.resolved['seed']}" for s in todo)
                log(
                    f"{spec.name}/{variant}: the group ({labels}) stopped with "
                    f"{type(exc).__name__}: {exc}; training its runs one at a time"
                )
                for started in todo:
                    _clean(started.run, log)
        for started in todo:
            seed = started.resolved["seed"]
            try:
                outcomes[seed] = _train_one(spec, started, data, progress=progress, is_main=True)
            except (KeyboardInterrupt, *STOPPING_ERRORS):
                raise
            except Exception as exc:
                if not keep_going:
                    raise
                outcomes[seed] = RunOutcome(
                    spec.name,
                    variant,
                    seed,
                    started.run.path,
                    "failed",
                    error=f"{type(exc).__name__}: {exc}",
                )
    return [outcomes[seed] for seed in seeds]


def _train_together(
    spec: ExperimentSpec[Any, Any], todo: Sequence[_Started], data: Any, *, progress: bool
) -> list[RunOutcome]:
    """Train prepared runs with ``spec.run_group``; write each ``result.json`` with an even
    share of the group's time."""
    if spec.run_group is None:  # the caller checks; kept for the type checker
        raise ValueError(f"{spec.name} has no run_group")
    ctxs = [
        RunContext(s.run, spec.name, s.resolved["variant"], s.resolved["seed"], progress=progress)
        for s in todo
    ]
    t0 = time.perf_counter()
    with _training(spec, todo[0].config) as ledger:
        run_threads = torch.get_num_threads()
        results = spec.run_group([s.config for s in todo], data, ctxs)
    if len(results) != len(todo):
        raise ValueError(
            f"{spec.name}: run_group returned {len(results)} results for {len(todo)} runs"
        )
    wall = time.perf_counter() - t0
    share = wall / len(todo)
    time_s = {name: round(v / len(todo), 3) for name, v in ledger.breakdown(wall).items()}
    return [
        _finish(
            spec,
            started,
            metrics,
            wall=share,
            run_threads=run_threads,
            time_s=time_s,
            is_main=True,
        )
        for started, metrics in zip(todo, results, strict=True)
    ]


def load_experiment_data(
    spec: ExperimentSpec[Any, Any],
    *,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    progress: bool = False,
    is_main: bool = True,
    load: Callable[[Path | None, bool], Any] | None = None,
) -> Any:
    """``spec.load_data`` (or ``load``, e.g. a cache in front of it); a failure is recorded
    in ``out_dir/<name>/not-run.json`` (which a success removes) and raised as
    :class:`ExperimentNotRunError`."""
    exp_dir = Path(out_dir) / spec.name
    load = load or spec.load_data
    try:
        data = load(Path(data_dir) if data_dir is not None else None, progress)
    except BnlabError as exc:
        if is_main:
            write_json_atomic(
                exp_dir / NOT_RUN,
                {
                    "reason": str(exc),
                    "error": type(exc).__name__,
                    "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                },
            )
        raise ExperimentNotRunError(f"{spec.name} did not run: {exc}") from exc
    if is_main:
        (exp_dir / NOT_RUN).unlink(missing_ok=True)
    return data


def run_experiment(
    spec: ExperimentSpec[Any, Any],
    *,
    out_dir: str | Path,
    variants: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 1,
    quick: bool = False,
    data_dir: str | Path | None = None,
    progress: bool | None = None,
    restart: bool = False,
    keep_going: bool = False,
    overrides: Mapping[str, str] | None = None,
    is_main: bool = True,
    log: Log = _stderr,
) -> list[RunOutcome]:
    """Run ``variants`` (default: all) of ``spec`` for each seed into ``out_dir/<name>/``.

    Args:
        seeds: ``K`` for seeds ``0..K-1``, or an explicit list.
        quick: tiny step counts (``spec.quick``), to check the code paths.
        data_dir: passed to ``spec.load_data`` (``None``: the default sources).
        progress: progress bars (``None``/``True``: when stderr is a terminal).
        restart: discard existing run directories of these runs and train again.
        keep_going: record a failed run and go on with the next (otherwise re-raise).
        overrides: config fields to change, as text (``{"num_batches": "2000"}``).
        is_main: whether this process writes files (rank 0 under data-parallel training).

    Returns:
        One :class:`RunOutcome` per (variant, seed), variants outer, seeds inner.

    Raises:
        UnknownNameError: an unknown variant name.
        ExperimentNotRunError: the data could not be loaded (recorded in ``not-run.json``).
        RunConflictError: a run directory holds another config (see :func:`run_one`).
    """
    names = list(variants) if variants else list(spec.variant_names())
    for name in names:
        # Unknown variants or override fields fail before anything runs.
        spec.config_for(name, 0, quick=quick, overrides=overrides)
    seeds_ = seed_list(seeds)
    show = progress_enabled(progress)
    process_git_revision()  # pin the revision of the code this process runs, before any run
    data = load_experiment_data(
        spec, out_dir=out_dir, data_dir=data_dir, progress=show, is_main=is_main
    )
    provenance = data_provenance(data)

    outcomes: list[RunOutcome] = []
    total = len(names) * len(seeds_)
    for name in names:
        for seed in seeds_:
            where = run_path(out_dir, spec.name, name, seed).relative_to(out_dir)
            label = f"[{len(outcomes) + 1}/{total}] {where}"
            try:
                outcome = run_one(
                    spec,
                    name,
                    seed,
                    data,
                    out_dir=out_dir,
                    quick=quick,
                    progress=show,
                    restart=restart,
                    overrides=overrides,
                    is_main=is_main,
                    log=log,
                    provenance=provenance,
                )
            except (KeyboardInterrupt, RunConflictError, RunLockedError, RunFilesError):
                raise
            except Exception as exc:
                if not keep_going:
                    raise
                log(f"{label}: FAILED: {type(exc).__name__}: {exc}")
                path = run_path(out_dir, spec.name, name, seed)
                outcomes.append(RunOutcome(spec.name, name, seed, path, "failed", error=str(exc)))
                continue
            if outcome.status == "done":
                log(f"{label}: done in {outcome.wall_time_s:.1f} s")
            outcomes.append(outcome)
    return outcomes
