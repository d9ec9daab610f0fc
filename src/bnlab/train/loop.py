"""The training loop shared by every experiment: steps, periodic measurements, checkpoints.

One :class:`Trainer` runs one *phase* (a fixed number of optimizer steps on one model).
It logs the per-step loss to ``metrics.jsonl`` in chunks (no host sync per step), runs
:class:`Hook` measurements at the seed's intervals, checkpoints atomically, resumes from its
checkpoint after an interruption, and stops with :class:`NonFiniteLossError` on a NaN loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bnlab.train import distributed as data_parallel
from bnlab.train.checkpoint import Checkpoint, capture_rng_state, restore_rng_state
from bnlab.train.errors import NonFiniteLossError
from bnlab.train.metrics import MetricsLog
from bnlab.train.progress import progress_bar
from bnlab.train.rundir import RunDir
from bnlab.train.source import BatchSource
from bnlab.train.timing import charge, timed


@dataclass(frozen=True)
class HookContext:
    """What a :class:`Hook` sees after a training step.

    Attributes:
        batch: 0-based index of the batch just trained (the seeds' ``batch_i``).
        step: optimizer updates completed (``batch + 1``).
        model: the model (in training mode; use :func:`bnlab.train.eval_mode` to evaluate).
        inputs, targets: the batch just trained on.
    """

    batch: int
    step: int
    model: nn.Module
    inputs: Tensor
    targets: Tensor


@dataclass(frozen=True)
class Hook:
    """A measurement taken after some training steps; its values become a metrics record.

    Attributes:
        tag: the record's ``tag`` (e.g. ``"validation"``).
        fn: returns the values to log (e.g. ``{"loss": ..., "accuracy": ...}``).
        when: given the 0-based batch index, whether to run (see :func:`every`).
    """

    tag: str
    fn: Callable[[HookContext], Mapping[str, float]]
    when: Callable[[int], bool]


def every(n: int, *, unless_every: int | None = None) -> Callable[[int], bool]:
    """Return a predicate true on batch indices ``0, n, 2n, ...``, optionally skipping others.

    ``every(25, unless_every=100)`` reproduces the seeds' ``if batch_i % 100 == 0: ...
    elif batch_i % 25 == 0: ...``.

    >>> [b for b in range(0, 201) if every(25, unless_every=100)(b)]
    [25, 50, 75, 125, 150, 175]
    """
    if n < 1:
        raise ValueError(f"every(n) needs n >= 1; got {n}")
    if unless_every is not None and unless_every < 1:
        raise ValueError(f"unless_every must be >= 1 or None; got {unless_every}")

    def when(batch: int) -> bool:
        if unless_every is not None and batch % unless_every == 0:
            return False
        return batch % n == 0

    return when


class Start(NamedTuple):
    """Where an unfinished phase starts (:meth:`Trainer._begin`): after step ``step`` (0 for
    a fresh phase), with ``elapsed_s`` of training time already spent, ``resumed_from`` the
    checkpoint's step or ``None``."""

    step: int
    elapsed_s: float
    resumed_from: int | None


@dataclass(frozen=True)
class FitResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        steps: optimizer steps completed in the phase (its full length on success).
        elapsed_s: training wall time of the phase over all sessions (hooks included).
        resumed_from: the checkpoint step this start resumed from, or ``None``.
        trained_steps: steps run since this start (0 when the phase was already finished).
    """

    steps: int
    elapsed_s: float
    resumed_from: int | None
    trained_steps: int


class Trainer:
    """Train ``model`` for ``num_steps`` optimizer steps on batches from ``batches``.

    Each step, in training mode (set before the first step and after the hooks):
    ``loss = loss_fn(model(x), y)``; backward; ``optimizer.step()``.
    The loss tensor is kept (detached) and written every ``log_every`` steps as records
    ``{"phase", "tag": "train", "step", "loss"}``; only then is it read back to the host and
    checked for NaN/inf. After each step the hooks whose ``when(batch)`` holds run and log a
    record with their ``tag``. Every ``checkpoint_every`` steps and at the end the full state
    is saved atomically to ``run.checkpoint_path(phase)``.

    If that checkpoint exists when :meth:`fit` starts, the phase continues from it (the metrics
    log is cut back to the checkpoint's offset, so no record is duplicated); if it marks the
    phase as finished, the state is restored and nothing is trained.

    Args:
        model, optimizer: the network and its optimizer.
        loss_fn: ``(outputs, targets) -> scalar`` loss.
        batches: the batch sampler (:class:`BatchSource`).
        num_steps: optimizer steps in the phase.
        run: the run directory, or ``None`` to keep metrics in memory and write no files.
        phase: the phase name (records' ``phase``, the checkpoint's file name).
        hooks: measurements taken during training.
        checkpoint_every: steps between checkpoints (0: only at the end); rounded to a
            multiple of ``log_every`` so a checkpoint never holds an unchecked NaN.
        log_every: steps between metric writes and NaN checks.
        progress: draw a progress bar on stderr.
        desc: progress bar label and the prefix of error messages.
        extra_state: ``(get, set)`` callables for experiment state that must survive a resume.
        is_main: whether this process writes files (rank 0 under data-parallel training).

    Raises:
        NonFiniteLossError: from :meth:`fit`, when a loss is NaN or infinite.

    >>> import torch
    >>> from torch import nn
    >>> class Ones:
    ...     def next_batch(self): return torch.ones(4, 2), torch.zeros(4, dtype=torch.long)
    ...     def state_dict(self): return {}
    ...     def load_state_dict(self, state): pass
    >>> net = nn.Linear(2, 2)
    >>> trainer = Trainer(net, torch.optim.SGD(net.parameters(), lr=0.1),
    ...                   nn.functional.cross_entropy, Ones(), num_steps=5, log_every=5)
    >>> trainer.fit().steps
    5
    >>> len([r for r in trainer.metrics.records if r["tag"] == "train"])
    5
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batches: BatchSource,
        num_steps: int,
        *,
        run: RunDir | None = None,
        phase: str = "train",
        hooks: Sequence[Hook] = (),
        checkpoint_every: int = 100,
        log_every: int = 25,
        progress: bool = False,
        desc: str = "train",
        extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]
        | None = None,
        is_main: bool = True,
    ) -> None:
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0; got {num_steps}")
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1; got {log_every}")
        if checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 (0: only at the end); got {checkpoint_every}"
            )
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.batches = batches
        self.num_steps = num_steps
        self.run = run if is_main else None
        self.phase = phase
        self.hooks = tuple(hooks)
        # A checkpoint is only taken right after a NaN check, i.e. on a multiple of log_every.
        self.checkpoint_every = (
            0
            if checkpoint_every == 0
            else max(log_every, checkpoint_every // log_every * log_every)
        )
        self.log_every = log_every
        self.progress = progress
        self.desc = desc
        self.extra_state = extra_state
        self.metrics: MetricsLog = (
            run.metrics if (run is not None and is_main) else MetricsLog(None)
        )
        self._checkpoint_file = run.checkpoint_path(phase) if run is not None else None
        self._losses: list[Tensor] = []
        self._first_pending_step = 1
        self._bar: Any = None

    # -- state ----------------------------------------------------------------------------
    def _state(self, step: int, elapsed_s: float, offset: int) -> Checkpoint:
        return Checkpoint(
            phase=self.phase,
            step=step,
            num_steps=self.num_steps,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            sampler=self.batches.state_dict(),
            rng=capture_rng_state(),
            metrics_offset=offset,
            elapsed_s=elapsed_s,
            extra=self.extra_state[0]() if self.extra_state else {},
        )

    def _restore(self, ckpt: Checkpoint) -> None:
        if ckpt.num_steps != self.num_steps or ckpt.phase != self.phase:
            raise ValueError(
                f"{self._checkpoint_file}: the checkpoint is for phase {ckpt.phase!r} of "
                f"{ckpt.num_steps} steps, but this run asks for phase {self.phase!r} of "
                f"{self.num_steps} steps; delete the run directory to start over"
            )
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.batches.load_state_dict(ckpt.sampler)
        if self.extra_state:
            self.extra_state[1](ckpt.extra)
        restore_rng_state(ckpt.rng)

    # -- logging --------------------------------------------------------------------------
    def _flush_losses(self) -> None:
        """Write the buffered per-step losses; raise on the first non-finite one."""
        if not self._losses:
            return
        # Under data parallelism: the global batch's loss (one all-reduce per chunk).
        stacked = data_parallel.current().mean_across_ranks(torch.stack(self._losses))
        values = stacked.tolist()  # the one host sync per chunk
        first = self._first_pending_step
        self._losses.clear()
        self._first_pending_step = first + len(values)
        self.metrics.extend(
            {"phase": self.phase, "tag": "train", "step": first + i, "loss": v}
            for i, v in enumerate(values)
        )
        self.metrics.flush()
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{values[-1]:.4f}", refresh=False)
        for i, v in enumerate(values):
            if not math.isfinite(v):
                self._raise_non_finite(first + i, v)

    def _raise_non_finite(self, step: int, value: float) -> None:
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        if self.run is None:
            where = "no checkpoint was written (no run directory)"
        else:
            last = step - 1 - (step - 1) % self.checkpoint_every if self.checkpoint_every else 0
            where = f"the metrics up to step {step} are in {self.run.metrics_path}" + (
                f"; the last checkpoint is at step {last}" if last else ""
            )
        hint = (
            f"Try a lower learning rate (now {lr}), batch normalization, gradient clipping, "
            f"or float64 to locate the overflow; {where}."
        )
        raise NonFiniteLossError(self.desc, step, value, hint)

    # -- the loop -------------------------------------------------------------------------
    def _begin(self) -> FitResult | Start:
        """Restore the phase's checkpoint if there is one: a :class:`FitResult` when the
        phase is finished, else where it starts."""
        start_step = 0
        elapsed_before = 0.0
        resumed_from: int | None = None
        if self._checkpoint_file is not None and self._checkpoint_file.is_file():
            ckpt = Checkpoint.load(self._checkpoint_file)
            self._restore(ckpt)
            if ckpt.finished:
                return FitResult(ckpt.step, ckpt.elapsed_s, ckpt.step, 0)
            if self.run is not None:
                # Records logged after the checkpoint are re-logged by the replayed steps.
                self.run.metrics.truncate(ckpt.metrics_offset)
            start_step, elapsed_before, resumed_from = ckpt.step, ckpt.elapsed_s, ckpt.step
        self._first_pending_step = start_step + 1
        return Start(start_step, elapsed_before, resumed_from)

    def _after_step(self, step: int, x: Tensor, y: Tensor) -> None:
        """The bookkeeping after optimizer step ``step`` (its loss already buffered):
        write the buffered losses when due, run the due hooks and log their records, and
        put the model back in training mode after them."""
        batch = step - 1
        due = [hook for hook in self.hooks if hook.when(batch)]
        if due or step % self.log_every == 0 or step == self.num_steps:
            with timed("metric_writes"):
                self._flush_losses()
        if due:
            ctx = HookContext(batch=batch, step=step, model=self.model, inputs=x, targets=y)
            for hook in due:
                with timed(f"hook:{hook.tag}"):
                    values = dict(hook.fn(ctx))
                self.metrics.append({"phase": self.phase, "tag": hook.tag, "step": step, **values})
            with timed("metric_writes"):
                self.metrics.flush()
            self.model.train()

    def _checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint is written after step ``step``."""
        at_checkpoint = bool(self.checkpoint_every) and step % self.checkpoint_every == 0
        return self.run is not None and (at_checkpoint or step == self.num_steps)

    def _save_checkpoint(self, step: int, elapsed_s: float) -> None:
        """Write the checkpoint of step ``step`` (the metrics log flushed and synced first)."""
        with timed("checkpoints"):
            offset = self.metrics.flush(fsync=True)
            self._state(step, elapsed_s, offset).save(self._checkpoint_file)  # type: ignore[arg-type]

    def fit(self) -> FitResult:
        """Run (or resume, or skip if finished) the phase; return what was done."""
        begun = self._begin()
        if isinstance(begun, FitResult):
            return begun
        start_step, elapsed_before, resumed_from = begun
        t0 = time.perf_counter()
        steps_s = 0.0  # charged to the run's time ledger once, at the end
        self._bar = progress_bar(
            self.num_steps, self.desc, enabled=self.progress, initial=start_step
        )
        # Training mode once here and again after the hooks, which may change it: the only
        # code that runs between steps. (model.train() walks every module and costs about
        # 0.1 ms for a small MLP, a sixth of its step.)
        self.model.train()
        try:
            for step in range(start_step + 1, self.num_steps + 1):
                t_step = time.perf_counter()
                x, y = self.batches.next_batch()
                loss = self.loss_fn(self.model(x), y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self._losses.append(loss.detach())
                steps_s += time.perf_counter() - t_step
                self._bar.update(1)
                self._after_step(step, x, y)
                if self._checkpoint_due(step):
                    self._save_checkpoint(step, elapsed_before + time.perf_counter() - t0)
        finally:
            self._bar.close()
            self._bar = None
            charge("train_steps", steps_s)
        elapsed = elapsed_before + time.perf_counter() - t0
        return FitResult(self.num_steps, elapsed, resumed_from, self.num_steps - start_step)
