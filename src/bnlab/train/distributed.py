"""Data-parallel training on torch.distributed for the experiment engine.

``init_from_env`` joins the process group ``torchrun`` describes (with a timeout, and a
clear error for an inconsistent launch); :class:`DataParallel` shards each global batch
over the ranks and wraps the model in DistributedDataParallel, with synchronized batch
norm when asked. One process (no torchrun) is the same code with ``world_size == 1``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.errors import BnlabError
from bnlab.train.source import BatchSource

__all__ = [
    "DataParallel",
    "DistributedLaunchError",
    "ShardedBatches",
    "current",
    "init_from_env",
    "shutdown",
    "using",
]

#: Seconds a rank waits for the others at start-up and in each collective before it
#: gives up with an error (a dead or stalled peer must not hang the survivors forever).
DEFAULT_TIMEOUT_S = 300.0

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedLaunchError(BnlabError):
    """The processes were launched inconsistently: missing torchrun variables, a backend
    that is not available, a world size that does not divide the batch, a failed
    rendezvous."""


class ShardedBatches:
    """This rank's share of each global batch drawn from ``source``.

    Every rank holds an identically seeded ``source`` and draws the same global batch;
    rank r keeps rows ``[r*b, (r+1)*b)`` with ``b = B / world_size``. The ranks together
    see exactly the single-process batches, so with DDP's gradient average (of per-rank
    mean losses over equal shards) one step equals a single-process step on the global
    batch, up to batch-norm statistics (equal too with synchronized batch norm).

    Raises:
        DistributedLaunchError: from :meth:`next_batch`, when ``world_size`` does not
            divide the global batch (every rank raises at the same step, none hangs).

    >>> class Ten:
    ...     def next_batch(self): return torch.arange(10.0), torch.arange(10)
    ...     def state_dict(self): return {}
    ...     def load_state_dict(self, state): pass
    >>> ShardedBatches(Ten(), rank=1, world_size=2).next_batch()[1].tolist()
    [5, 6, 7, 8, 9]
    """

    def __init__(self, source: BatchSource, *, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"expected 0 <= rank < world_size; got rank {rank} of {world_size}")
        self.source = source
        self.rank = rank
        self.world_size = world_size

    def next_batch(self) -> tuple[Tensor, Tensor]:
        x, y = self.source.next_batch()
        total = x.shape[0]
        if total % self.world_size:
            raise DistributedLaunchError(
                f"the global batch of {total} does not split evenly over {self.world_size} "
                f"processes; launch a number of processes that divides {total} (e.g. "
                f"torchrun --nproc-per-node {_divisor_hint(total, self.world_size)})"
            )
        b = total // self.world_size
        return x[self.rank * b : (self.rank + 1) * b], y[self.rank * b : (self.rank + 1) * b]

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


def _divisor_hint(total: int, world: int) -> int:
    """The largest divisor of ``total`` not above ``world`` (at least 1)."""
    return max(d for d in range(1, world + 1) if total % d == 0)


@dataclass(frozen=True)
class DataParallel:
    """How this process takes part in training: its rank, the world, and the options.

    Attributes:
        rank: this process's rank (0 writes the run directory).
        world_size: processes training together (1: plain single-process training).
        local_rank: rank on this machine.
        backend: the process group's backend (``"gloo"``), or None for one process.
        sync_bn: replace batch norm by :class:`bnlab.SyncBatchNorm` so statistics span the
            global batch; without it each process normalizes by its own shard.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    sync_bn: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    def shard(self, batches: BatchSource) -> BatchSource:
        """``batches`` itself for one process, else this rank's :class:`ShardedBatches`."""
        if not self.enabled:
            return batches
        return ShardedBatches(batches, rank=self.rank, world_size=self.world_size)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: ``model`` itself for one process; otherwise a
        DistributedDataParallel around it (its batch norm synchronized if ``sync_bn``).

        DDP broadcasts rank 0's parameters and buffers at construction and averages the
        gradients in backward. With ``sync_bn`` the batch-norm layers of ``model`` are
        replaced inside ``model`` (each by a converted copy holding its state), so the
        caller's reference to ``model`` stays the trained network. Build the optimizer
        from the parameters after this call: the swapped layers own new ones.
        """
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.sync_bn and _swap_in_sync_bn(model) == 0:
            warnings.warn(
                f"sync_bn: {type(model).__name__} has no batch-norm module to synchronize "
                "(hand-written batch norm, e.g. deep-cnn's bn-lowlevel, stays per-process)",
                stacklevel=2,
            )
        return DistributedDataParallel(model)

    def mean_across_ranks(self, values: Tensor) -> Tensor:
        """The element-wise mean of ``values`` over the ranks (one all-reduce); ``values``
        itself for one process. Every rank must call it at the same point.

        Per-rank mean losses over equal shards average to the global batch's mean loss,
        so logged losses mean the same at any world size.
        """
        if not self.enabled:
            return values
        import torch.distributed as dist

        total = values.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def run_key(self) -> dict[str, Any]:
        """What makes a run directory's training differ from one process: ``{}`` for one
        process, else the world size and ``sync_bn`` (recorded in ``config.json``)."""
        if not self.enabled:
            return {}
        return {"world_size": self.world_size, "sync_bn": self.sync_bn}

    def run_label(self, variant: str) -> str:
        """The run-directory name of ``variant`` trained this way.

        ``variant`` itself for one process; else ``variant@<N>proc-syncbn`` (statistics
        synchronized) or ``variant@<N>proc-localbn`` (each process normalizes with its own
        shard's statistics). Runs of each kind land beside the single-process ones, so the
        report compares them as variants of the same experiment.

        >>> DataParallel().run_label("bn")
        'bn'
        """
        if not self.enabled:
            return variant
        return f"{variant}@{self.world_size}proc-{'syncbn' if self.sync_bn else 'localbn'}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for ``env.json``."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "sync_bn": self.sync_bn,
        }


def _swap_in_sync_bn(model: nn.Module) -> int:
    """Replace, in place, each plain batch-norm layer under ``model`` by a SyncBatchNorm
    holding its state (variants that normalize differently are left alone); return how
    many layers synchronize now."""
    from bnlab.norm import BATCH_NORM_TYPES
    from bnlab.norm.layers.sync import SyncBatchNorm, convert_sync_batchnorm

    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, SyncBatchNorm):
            count += 1
        elif isinstance(child, BATCH_NORM_TYPES):
            new = convert_sync_batchnorm(child)  # a converted copy of this one layer
            if isinstance(new, SyncBatchNorm):
                model.add_module(name, new)
                count += 1
        else:
            count += _swap_in_sync_bn(child)
    return count


_current = DataParallel()


def current() -> DataParallel:
    """The data-parallel setting of this process (single process unless set by the CLI)."""
    return _current


@contextlib.contextmanager
def using(dp: DataParallel) -> Iterator[DataParallel]:
    """Make ``dp`` the :func:`current` setting inside the block (restored afterwards)."""
    global _current
    previous, _current = _current, dp
    try:
        yield dp
    finally:
        _current = previous


def init_from_env(
    *,
    sync_bn: bool = False,
    backend: str = "gloo",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> DataParallel:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialized and the
    single-process setting is returned. Otherwise ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` must be set (torchrun sets them) and the group
    is created with ``timeout_s`` on rendezvous and every collective.

    Args:
        sync_bn: synchronize batch-norm statistics across processes.
        backend: ``"gloo"``; the engine keeps its data on the CPU.
        timeout_s: rendezvous and collective timeout in seconds.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The :class:`DataParallel` setting of this process.

    Raises:
        DistributedLaunchError: missing or inconsistent variables, an unavailable
            backend, or a rendezvous that failed or timed out.
    """
    env = os.environ if environ is None else environ
    world = _int_var(env, "WORLD_SIZE", "1")
    if world < 1:
        raise DistributedLaunchError(f"WORLD_SIZE must be >= 1; got {world}")
    if world == 1:
        return DataParallel(sync_bn=sync_bn)
    missing = [v for v in _TORCHRUN_VARS if v not in env]
    if missing:
        raise DistributedLaunchError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with torchrun, "
            f"e.g. torchrun --standalone --nproc-per-node {world} -m bnlab run EXPERIMENT"
        )
    rank, local_rank = _int_var(env, "RANK"), _int_var(env, "LOCAL_RANK")
    if not 0 <= rank < world:
        raise DistributedLaunchError(f"RANK must lie in [0, {world}); got {rank}")
    import torch.distributed as dist

    if backend != "gloo":
        raise DistributedLaunchError(
            f"the experiment engine trains on the CPU with the gloo backend; got {backend!r}"
        )
    if not (dist.is_available() and dist.is_gloo_available()):
        raise DistributedLaunchError(
            "this torch build has no gloo backend (torch.distributed.is_gloo_available() is "
            "False); install a torch build with distributed support"
        )
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0; got {timeout_s}")
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        except (RuntimeError, ValueError) as err:
            raise DistributedLaunchError(
                f"rank {rank} of {world} could not join the process group at "
                f"{env['MASTER_ADDR']}:{env['MASTER_PORT']} within {timeout_s:.0f} s: {err}"
            ) from err
    # Ranks share the machine's cores: more intra-op threads than cores per rank makes
    # OpenMP spin against itself. torchrun's OMP_NUM_THREADS, when set, already decides.
    if "OMP_NUM_THREADS" not in env:
        per_machine = _int_var(env, "LOCAL_WORLD_SIZE", str(world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    return DataParallel(rank, world, local_rank, backend, sync_bn)


def _int_var(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    text = env.get(name, default)
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DistributedLaunchError(
            f"environment variable {name} must be an integer; got {text!r}"
        ) from None


def shutdown() -> None:
    """Leave the process group if one was joined (safe to call when none was)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
