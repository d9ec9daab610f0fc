"""Run many (experiment, variant, seed) runs, one at a time or side by side.

``bnlab reproduce`` and ``bnlab run`` hand their whole list of runs to :func:`run_all`.
With ``jobs=1`` every run trains in this process, in list order, with its own progress
bar. With ``jobs > 1`` the runs go to ``jobs`` worker processes (``spawn``), longest first
(:attr:`ExperimentSpec.cost_s`), and a run starts only when the threads it needs are free:
each run trains on its config's ``num_threads`` (fixed per experiment and recorded in
``config.json``), so the sum over running runs never exceeds the machine's cores and a
run's numbers never depend on ``jobs``. Oversubscribed OpenMP threads make batch-norm
steps several times slower; this is what the thread budget prevents. The seeds of a
variant whose experiment offers ``run_group`` are one task (trained together as one
stacked model, :func:`bnlab.experiments.runner.run_group`) on one run's threads.

Either way: one line per finished run with its time, and an overall bar with the runs done,
the elapsed time and an estimate of the time left. A failed run is recorded
(``failed.json``) and, with ``keep_going``, the others go on; a run directory holding
another config, a locked run, a corrupt checkpoint or unusable run files stop everything
(the runs already training are stopped and resume from their checkpoints on the next
call). Ctrl-C, SIGTERM and SIGHUP stop the workers the same way (:class:`Stopped`), and a
worker whose parent dies without a word (SIGKILL) is killed by the kernel
(``PR_SET_PDEATHSIG``; a watcher thread where that is missing), so no worker outlives its
job and no lock stays held.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bnlab.errors import BnlabError
from bnlab.experiments.base import ExperimentSpec
from bnlab.experiments.registry import get_experiment, importable_by_name
from bnlab.experiments.runner import (
    STOPPING_ERRORS,
    ExperimentNotRunError,
    RunOutcome,
    group_size_limit,
    load_experiment_data,
    run_group,
    run_one,
    run_path,
)
from bnlab.train.env import adopt_process_git_revision, process_git_revision
from bnlab.train.progress import progress_enabled

__all__ = [
    "RunRequest",
    "RunSettings",
    "Stopped",
    "admit",
    "available_cores",
    "default_jobs",
    "plan",
    "run_all",
    "stop_on_signals",
]

Log = Callable[[str], None]

#: Errors that stop the whole job: a rerun needs a decision first (``--restart``, ``--out``).
_STOPPING = STOPPING_ERRORS


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


class Stopped(KeyboardInterrupt):
    """The job was stopped by a signal (SIGTERM, SIGHUP): raised in the main thread like
    Ctrl-C's ``KeyboardInterrupt``, so the same clean-up runs (workers stopped, locks
    released, no run recorded as failed) and the next call resumes.

    Attributes:
        signum: the signal's number (the CLI exits with ``128 + signum``).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


#: The signals that stop a job as Ctrl-C does (SIGINT is Python's KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` for the block (main thread only;
    elsewhere a no-op), then restore the previous handlers. A signal that was ignored
    (``nohup``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_jobs() -> int:
    """Runs side by side by default: one per core (most runs train on one thread)."""
    return available_cores()


@dataclass(frozen=True)
class RunRequest:
    """One task to do: a registered experiment's variant at one seed, or at several seeds
    trained together as one group (``seeds``, see
    :func:`bnlab.experiments.runner.run_group`), with the threads the task needs and its
    estimated time (from the resolved config)."""

    experiment: str
    variant: str
    seed: int
    threads: int = 1
    cost_s: float = 30.0
    seeds: tuple[int, ...] = ()  # a group's seeds (``seed`` is the first); () for one run

    @property
    def runs(self) -> tuple[int, ...]:
        """The seeds this task trains."""
        return self.seeds or (self.seed,)

    @property
    def label(self) -> str:
        if self.seeds:
            return f"{self.experiment}/{self.variant}/seeds-{','.join(map(str, self.seeds))}"
        return f"{self.experiment}/{self.variant}/seed-{self.seed}"


@dataclass(frozen=True)
class RunSettings:
    """What every run of one call shares (see :func:`bnlab.experiments.runner.run_one`)."""

    out_dir: Path
    quick: bool = False
    data_dir: Path | None = None
    restart: bool = False
    overrides: Mapping[str, str] = field(default_factory=dict)


def plan(
    specs: Sequence[ExperimentSpec[Any, Any]],
    seeds: Sequence[int],
    *,
    variants: Sequence[str] | None = None,
    quick: bool = False,
    overrides: Mapping[str, str] | None = None,
    group: bool = True,
) -> list[RunRequest]:
    """Every (experiment, variant, seed) of ``specs``, experiments and variants in their
    order, seeds inner. Resolving each config first makes unknown variants, unknown
    ``--set`` fields and bad values fail before anything runs.

    With ``group`` the seeds of a variant whose experiment offers
    :attr:`ExperimentSpec.run_group` are one task (one request with ``seeds``) that
    trains them together on one run's threads, its cost
    :meth:`ExperimentSpec.estimated_group_cost_s`; more seeds than
    :func:`~bnlab.experiments.runner.group_size_limit` make several such tasks (a group
    holds one open lock file per run).

    Raises:
        UnknownNameError, ConfigError: from :meth:`ExperimentSpec.config_for`.
    """
    out: list[RunRequest] = []
    for spec in specs:
        for variant in variants or spec.variant_names():
            configs = [
                spec.config_for(variant, seed, quick=quick, overrides=overrides) for seed in seeds
            ]
            threads = [int(getattr(c, "num_threads", 1) or 1) for c in configs]
            if group and spec.run_group is not None and len(seeds) > 1:
                size = group_size_limit()
                for start in range(0, len(seeds), size):
                    part = tuple(seeds[start : start + size])
                    cost = spec.estimated_group_cost_s(configs[0], len(part))
                    out.append(RunRequest(spec.name, variant, part[0], threads[0], cost, part))
                continue
            for seed, config, n in zip(seeds, configs, threads, strict=True):
                out.append(RunRequest(spec.name, variant, seed, n, spec.estimated_cost_s(config)))
    return out


class _Progress:
    """The overall bar and the one-line-per-run log."""

    def __init__(self, requests: Sequence[RunRequest], jobs: int, show: bool, log: Log):
        self.total = sum(len(r.runs) for r in requests)
        self.jobs = max(1, jobs)
        self.log = log
        self.done = 0
        self.t0 = time.perf_counter()
        self.cost_left = sum(r.cost_s for r in requests)
        self.cost_done = 0.0
        self.wall_done = 0.0
        self.bar = tqdm(
            total=self.total,
            desc="runs",
            unit="run",
            file=sys.stderr,
            disable=not show,
            dynamic_ncols=True,
            bar_format="{desc}: {n}/{total} |{bar}| elapsed {elapsed}{postfix}",
        )

    def finished(self, request: RunRequest, outcome: RunOutcome, where: Path) -> None:
        """One run of ``request`` ended (a group's runs each count a share of its cost)."""
        self.done += 1
        label = f"[{self.done}/{self.total}] {where}"
        if outcome.status == "done":
            self.log(f"{label}: done in {outcome.wall_time_s:.1f} s")
        elif outcome.status == "failed":
            self.log(f"{label}: FAILED: {outcome.error}")
        cost = request.cost_s / len(request.runs)
        self.cost_left -= cost
        if outcome.status == "done":
            self.cost_done += cost
            self.wall_done += outcome.wall_time_s
        self.bar.update(1)
        self.bar.set_postfix_str(self._estimate(), refresh=True)

    def _estimate(self) -> str:
        if self.done >= self.total:
            return ""
        # The estimates, scaled by how this machine has done on them so far.
        scale = self.wall_done / self.cost_done if self.cost_done > 0 else 1.0
        left = max(0.0, self.cost_left) * scale / self.jobs
        return f", about {_clock(left)} left"

    def close(self) -> None:
        self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_all(
    requests: Sequence[RunRequest],
    settings: RunSettings,
    *,
    jobs: int = 1,
    keep_going: bool = True,
    progress: bool | None = None,
    log: Log = _stderr,
) -> tuple[list[RunOutcome], dict[str, str]]:
    """Do ``requests``; return one outcome per run (in request order, a group's runs in
    seed order, skipped and failed runs included) and ``{experiment: why}`` for
    experiments whose data could not be loaded (recorded in their ``not-run.json``; their
    runs are left out).

    Args:
        jobs: runs side by side (1: in this process, in order). The threads of the runs
            training at once never exceed ``max(jobs, available_cores())``.
        keep_going: record a failed run and go on (``bnlab reproduce``); otherwise the
            first failure stops the job and is raised (``bnlab run``).
        progress: the overall bar (and, with ``jobs=1``, each run's bar); ``None``/``True``:
            when stderr is a terminal.

    SIGTERM and SIGHUP (in the main thread) stop the job as Ctrl-C does: the workers are
    stopped, every lock is released, and :class:`Stopped` is raised.

    Raises:
        RunConflictError, RunLockedError, RunFilesError: a run directory that needs a
            decision first (see :func:`bnlab.experiments.runner.run_one`).
        Stopped: SIGTERM or SIGHUP (a ``KeyboardInterrupt``, as Ctrl-C raises).
        ValueError: ``jobs < 1``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; got {jobs}")
    with stop_on_signals():
        return _run_all(requests, settings, jobs, keep_going, progress, log)


def _run_all(
    requests: Sequence[RunRequest],
    settings: RunSettings,
    jobs: int,
    keep_going: bool,
    progress: bool | None,
    log: Log,
) -> tuple[list[RunOutcome], dict[str, str]]:
    show = progress_enabled(progress)
    process_git_revision()  # pin the revision of the code this job runs, before any run
    not_run: dict[str, str] = {}
    # Every experiment's data are loaded once here (experiments sharing a loader share
    # the load), to record the missing ones; the runs of this process reuse them.
    cache = _DataCache()
    for name in dict.fromkeys(r.experiment for r in requests):
        spec = get_experiment(name)
        try:
            load_experiment_data(
                spec,
                out_dir=settings.out_dir,
                data_dir=settings.data_dir,
                progress=show,
                load=cache.loader(spec, settings),
            )
        except ExperimentNotRunError as exc:
            not_run[name] = str(exc)  # the caller says it (reproduce goes on, run stops)
    ready = [r for r in requests if r.experiment not in not_run]
    # A worker process finds an experiment by importing it; one registered at run time
    # (a plug-in, a test's) lives only in this process, so its runs train here.
    if jobs > 1 and not all(importable_by_name(r.experiment) for r in ready):
        log("experiments registered at run time train in this process: --jobs 1")
        jobs = 1
    if jobs > 1:
        cache.clear()  # the workers load their own
    bar = _Progress(ready, jobs if len(ready) > 1 else 1, show, log)
    try:
        if jobs == 1 or len(ready) <= 1:
            outcomes = _serial(ready, settings, cache, bar, show, log, keep_going)
        else:
            outcomes = _parallel(ready, settings, bar, jobs, keep_going)
    finally:
        bar.close()
    return outcomes, not_run


def _where(outcome: RunOutcome, settings: RunSettings) -> Path:
    path = run_path(settings.out_dir, outcome.experiment, outcome.variant, outcome.seed)
    return path.relative_to(settings.out_dir)


def _failed(request: RunRequest, settings: RunSettings, error: str) -> list[RunOutcome]:
    """A failed outcome for each run of ``request`` (an error that escaped all of them)."""
    return [
        RunOutcome(
            request.experiment,
            request.variant,
            seed,
            run_path(settings.out_dir, request.experiment, request.variant, seed),
            "failed",
            error=error,
        )
        for seed in request.runs
    ]


# -- one process ------------------------------------------------------------------------
def _serial(
    requests: Sequence[RunRequest],
    settings: RunSettings,
    cache: _DataCache,
    bar: _Progress,
    show: bool,
    log: Log,
    keep_going: bool,
) -> list[RunOutcome]:
    outcomes: list[RunOutcome] = []
    for request in requests:
        try:
            done = _train(request, settings, cache, progress=show, log=log, keep_going=keep_going)
        except (KeyboardInterrupt, *_STOPPING):
            raise
        except Exception as exc:
            if not keep_going:
                raise
            done = _failed(request, settings, f"{type(exc).__name__}: {exc}")
        for outcome in done:
            bar.finished(request, outcome, _where(outcome, settings))
        outcomes += done
    return outcomes


class _DataCache:
    """The data of the last two ``load_data`` functions used (MNIST is shared by most)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Any] = {}

    @staticmethod
    def _key(spec: ExperimentSpec[Any, Any], settings: RunSettings) -> tuple[str, str]:
        fn = spec.load_data
        return (f"{fn.__module__}.{fn.__qualname__}", str(settings.data_dir))

    def get(
        self, spec: ExperimentSpec[Any, Any], settings: RunSettings, progress: bool = False
    ) -> Any:
        key = self._key(spec, settings)
        if key not in self._items:
            data_dir = settings.data_dir
            data = spec.load_data(Path(data_dir) if data_dir else None, progress)
            while len(self._items) >= 2:
                self._items.pop(next(iter(self._items)))
            self._items[key] = data
        return self._items[key]

    def loader(
        self, spec: ExperimentSpec[Any, Any], settings: RunSettings
    ) -> Callable[[Path | None, bool], Any]:
        """``spec.load_data``'s signature, served from this cache (the directory is the
        settings' own)."""

        def load(_data_dir: Path | None, progress: bool) -> Any:
            return self.get(spec, settings, progress)

        return load

    def clear(self) -> None:
        self._items.clear()


def _train(
    request: RunRequest,
    settings: RunSettings,
    cache: _DataCache,
    *,
    progress: bool,
    log: Log,
    keep_going: bool,
) -> list[RunOutcome]:
    """Train one request: a group through :func:`run_group`, one run through
    :func:`run_one`."""
    spec = get_experiment(request.experiment)
    data = cache.get(spec, settings)
    common: dict[str, Any] = {
        "out_dir": settings.out_dir,
        "quick": settings.quick,
        "progress": progress,
        "restart": settings.restart,
        "overrides": settings.overrides,
        "log": log,
    }
    if request.seeds:
        return run_group(
            spec, request.variant, request.seeds, data, keep_going=keep_going, **common
        )
    return [run_one(spec, request.variant, request.seed, data, **common)]


# -- worker processes -------------------------------------------------------------------
_WORKER_CACHE: _DataCache | None = None


#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies, however it dies (SIGKILL included).

    On Linux the kernel sends SIGTERM (``prctl(PR_SET_PDEATHSIG)``), whose default action
    ends the process at once; every file a run writes is atomic, so its checkpoints stay
    intact and the OS releases its lock. Elsewhere a daemon thread watches the parent's
    PID once a second. A parent already gone before the request took effect is caught by
    the check that follows it.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored SIGTERM may be inherited
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    if os.getppid() != parent:
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="bnlab-parent-watch", daemon=True).start()


def _worker_init(git: dict[str, Any], parent: int) -> None:
    """A worker: Ctrl-C is the parent's to handle, the parent's death ends it; one thread
    until a run sets its own."""
    global _WORKER_CACHE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    # tqdm would create a multiprocessing lock here (a named semaphore, unlinked at a clean
    # exit): a worker killed with its job would leave it to the resource tracker, which
    # reports it as leaked. A worker draws no bar; a thread lock serves its log lines.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(1)
    adopt_process_git_revision(git)
    _WORKER_CACHE = _DataCache()


@dataclass(frozen=True)
class _Reply:
    outcomes: list[RunOutcome] | None
    messages: list[str]
    stop: BaseException | None = None


def _worker_run(request: RunRequest, settings: RunSettings, keep_going: bool) -> _Reply:
    messages: list[str] = []
    assert _WORKER_CACHE is not None
    try:
        outcome = _train(
            request,
            settings,
            _WORKER_CACHE,
            progress=False,
            log=messages.append,
            keep_going=keep_going,
        )
    except _STOPPING as exc:
        return _Reply(None, messages, _picklable(exc))
    except Exception as exc:
        if not keep_going:
            return _Reply(None, messages, _picklable(exc))
        return _Reply(_failed(request, settings, f"{type(exc).__name__}: {exc}"), messages)
    return _Reply(outcome, messages)


def admit(waiting: Sequence[int], running: Sequence[int], jobs: int, budget: int) -> list[int]:
    """Which waiting runs start now, as positions in ``waiting`` (their thread counts, in
    priority order), given the thread counts of the ``running`` ones: first fit, at most
    ``jobs`` runs at once, their threads within ``budget``. A run that needs more than the
    budget on its own starts when nothing else runs.

    >>> admit([1, 1, 1], [], jobs=2, budget=2)
    [0, 1]
    >>> admit([2, 1], [1], jobs=2, budget=2)  # the 2-thread run waits; the 1-thread one fits
    [1]
    >>> admit([4], [], jobs=2, budget=2)
    [0]
    """
    started: list[int] = []
    count, in_use = len(running), sum(running)
    for position, need in enumerate(waiting):
        if count >= jobs:
            break
        if count and in_use + need > budget:
            continue
        started.append(position)
        count += 1
        in_use += need
    return started


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it survives the trip to the parent, else a :class:`BnlabError` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return BnlabError(str(exc))
    return exc


def _parallel(
    requests: Sequence[RunRequest],
    settings: RunSettings,
    bar: _Progress,
    jobs: int,
    keep_going: bool,
) -> list[RunOutcome]:
    budget = max(jobs, available_cores())
    # Longest first: the last runs to start are short, so the cores finish together.
    queue = sorted(range(len(requests)), key=lambda i: -requests[i].cost_s)
    outcomes: dict[int, list[RunOutcome]] = {}
    running: dict[Future[_Reply], int] = {}
    with _pool(jobs) as pool:
        while queue or running:
            busy = [requests[i].threads for i in running.values()]
            for i in admit([requests[i].threads for i in queue], busy, jobs, budget):
                running[pool.submit(_worker_run, requests[queue[i]], settings, keep_going)] = queue[
                    i
                ]
            queue = [i for i in queue if i not in running.values()]
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i = running.pop(future)
                request = requests[i]
                try:
                    reply = future.result()
                except BrokenProcessPool as exc:
                    raise BnlabError(
                        f"a worker process died while training {request.label} ({exc}); "
                        "rerun the command to resume, or use --jobs 1 to see the error"
                    ) from None
                for message in reply.messages:
                    bar.log(message)
                if reply.stop is not None:
                    raise reply.stop
                assert reply.outcomes is not None
                outcomes[i] = reply.outcomes
                for outcome in reply.outcomes:
                    bar.finished(request, outcome, _where(outcome, settings))
    return [outcome for i in range(len(requests)) for outcome in outcomes[i]]


@contextlib.contextmanager
def _pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """``jobs`` spawned workers; on any exit but success they are stopped at once, so an
    interrupted or stopped job leaves no process training (its runs resume later)."""
    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(process_git_revision(), os.getpid()),
    )
    try:
        yield pool
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())
        # SIGKILL: a worker may have inherited an ignored SIGTERM, and every file a run
        # writes is atomic, so nothing is lost; the runs resume from their checkpoints.
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=10)
        # The pool's manager thread sees its workers gone and ends; waiting for it closes
        # the queues, whose semaphores the resource tracker would otherwise call leaked.
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
