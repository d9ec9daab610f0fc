"""Run a function in N fresh local processes joined by one torch.distributed process group.

A small launcher for tests, examples and one-machine experiments: file:// rendezvous (no
port to pick), a timeout on every collective, and a bounded wait with clean-up when a
rank fails. Production launches use ``torchrun`` (see docs/distributed.md).
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from bnlab.errors import BnlabError

__all__ = ["RankFailure", "SpawnError", "spawn"]


@dataclass(frozen=True)
class RankFailure:
    """What went wrong in one rank of a :func:`spawn` run.

    Attributes:
        rank: the rank that failed.
        exitcode: the process exit status (negative: killed by that signal; None: it was
            still running when the launcher gave up and killed it).
        error: the exception's traceback text if the rank raised, else ``""``.
        killed: True when the launcher killed the process (it did not stop on its own).
    """

    rank: int
    exitcode: int | None
    error: str
    killed: bool

    def summary(self) -> str:
        """One line: the rank, how it ended, and the last line of its traceback."""
        if self.error:
            last = self.error.strip().splitlines()[-1]
            return f"rank {self.rank} raised {last}"
        if self.killed:
            return f"rank {self.rank} did not finish in time and was killed"
        return f"rank {self.rank} exited with status {self.exitcode} and no Python error"


class SpawnError(BnlabError, RuntimeError):
    """One or more ranks of a :func:`spawn` run failed.

    Attributes:
        world_size: the number of processes launched.
        failures: how each failed rank ended (:class:`RankFailure`), by rank.
        results: the return values of the ranks that did finish, by rank.
        elapsed_s: wall-clock seconds from launch to the last process's end.
    """

    def __init__(
        self,
        world_size: int,
        failures: list[RankFailure],
        elapsed_s: float,
        results: dict[int, Any] | None = None,
    ) -> None:
        self.world_size = world_size
        self.failures = tuple(failures)
        self.results = dict(results or {})
        self.elapsed_s = elapsed_s
        lines = "\n  ".join(f.summary() for f in self.failures)
        super().__init__(
            f"{len(self.failures)} of {world_size} processes failed after {elapsed_s:.1f} s:"
            f"\n  {lines}"
        )


def _child(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    args: tuple[Any, ...],
    backend: str,
    store_path: str,
    result_path: str,
    timeout_s: float,
    threads: int,
) -> None:
    """Body of one spawned rank: join the group, run ``fn``, write the outcome to a file."""
    import torch
    import torch.distributed as dist

    outcome: tuple[str, Any]
    try:
        # Ranks share the machine's cores; more threads than cores makes OpenMP spin
        # against itself (measured: tiny batch-norm calls went from <1 ms to ~25 ms).
        torch.set_num_threads(threads)
        dist.init_process_group(
            backend,
            init_method=f"file://{store_path}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        try:
            result = fn(rank, world_size, *args)
            # Every rank finishes before any leaves: a gloo peer that tears its group down
            # while another rank is still in a collective (DDP's teardown included) makes
            # that rank's process abort at exit ("terminate called without an active
            # exception", seen as exit status -6 in about one run in five).
            dist.barrier()
            outcome = ("ok", result)
        finally:
            dist.destroy_process_group()
    except BaseException:
        outcome = ("error", traceback.format_exc())
    # The outcome travels through a file, not a Queue: a child blocked on a full pipe
    # could never exit, and torch's shared-memory tensor pickling would tie the data's
    # lifetime to this process. Plain pickle copies tensors by value.
    tmp = f"{result_path}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(outcome, fh)
    os.replace(tmp, result_path)
    # Leave without the interpreter's teardown: with the outcome safe on disk, nothing is
    # left to do, and C++ destructors of torch.distributed's threads at exit sometimes
    # abort the process ("terminate called without an active exception", status -6),
    # which would hide a finished rank behind a crash.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if outcome[0] == "error" else 0)


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple[Any, ...] = (),
    *,
    backend: str = "gloo",
    timeout_s: float = 60.0,
    deadline_s: float = 600.0,
    grace_s: float | None = None,
    threads_per_rank: int | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes and return results.

    Each process joins a ``torch.distributed`` process group (``backend``, file://
    rendezvous in a private temporary directory) before ``fn`` runs and destroys it after.

    Failure is bounded in time: every collective and the rendezvous time out after
    ``timeout_s``; once a rank fails, the others get ``grace_s`` (default ``timeout_s +
    5``) to stop on their own before they are killed; after ``deadline_s`` in all, every
    process still alive is killed. No process and no temporary file outlives the call.

    Args:
        fn: a module-level function (it is pickled by name for the ``spawn`` start method).
        world_size: number of processes, at least 1.
        args: extra positional arguments for ``fn`` (picklable).
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per rank).
        timeout_s: process-group timeout for rendezvous and each collective.
        deadline_s: wall-clock limit for the whole run.
        grace_s: how long the other ranks may run after the first failure.
        threads_per_rank: torch intra-op threads in each rank (default: the CPU count
            divided by ``world_size``, at least 1, as torchrun's OMP_NUM_THREADS=1 intends).

    Returns:
        The return values of ``fn``, indexed by rank (they must be picklable).

    Raises:
        ValueError: ``world_size`` < 1 or a non-positive time limit.
        SpawnError: a rank raised, exited non-zero, or was killed; ``failures`` lists
            each, ``results`` holds what the other ranks returned.

    >>> def add(rank: int, world: int) -> int:  # doctest: +SKIP
    ...     return rank + world
    >>> spawn(add, 2)  # doctest: +SKIP
    [2, 3]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if timeout_s <= 0 or deadline_s <= 0:
        raise ValueError(f"timeout_s and deadline_s must be > 0, got {timeout_s}, {deadline_s}")
    grace = timeout_s + 5.0 if grace_s is None else grace_s
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world_size)

    ctx = multiprocessing.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="bnlab-spawn-")
    store = os.path.join(workdir, "store")
    results = [os.path.join(workdir, f"rank-{r}.pkl") for r in range(world_size)]
    procs = [
        ctx.Process(
            target=_child,
            args=(fn, r, world_size, args, backend, store, results[r], timeout_s, threads),
            name=f"bnlab-rank-{r}",
            daemon=True,  # the interpreter kills them if the parent dies first
        )
        for r in range(world_size)
    ]
    start = time.monotonic()
    killed: set[int] = set()
    try:
        for p in procs:
            p.start()
        first_failure: float | None = None
        # One snapshot of the live processes per turn: waiting on a list computed after
        # the last one exited would be wait([]), which sleeps for the whole timeout.
        alive = list(procs)
        while alive:
            now = time.monotonic()
            if first_failure is None and any(p.exitcode not in (None, 0) for p in procs):
                first_failure = now
            limit = start + deadline_s
            if first_failure is not None:
                limit = min(limit, first_failure + grace)
            if now >= limit:
                break
            ready = wait([p.sentinel for p in alive], timeout=limit - now)
            for p in alive:
                if p.sentinel in ready:
                    p.join()  # it has exited; reap it so exitcode is set
            alive = [p for p in alive if p.exitcode is None]
        for r, p in enumerate(procs):
            if p.is_alive():
                killed.add(r)
                p.kill()
        for p in procs:
            p.join()
        elapsed = time.monotonic() - start

        outcomes: dict[int, Any] = {}
        failures: list[RankFailure] = []
        for r, p in enumerate(procs):
            status, payload = "missing", None
            if os.path.exists(results[r]):
                with open(results[r], "rb") as fh:
                    status, payload = pickle.load(fh)
            if status == "ok" and p.exitcode == 0:
                outcomes[r] = payload
                continue
            error = str(payload) if status == "error" else ""
            exitcode = None if r in killed else p.exitcode
            failures.append(RankFailure(r, exitcode, error, r in killed))
        if failures:
            raise SpawnError(world_size, failures, elapsed, outcomes)
        return [outcomes[r] for r in range(world_size)]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(workdir, ignore_errors=True)
