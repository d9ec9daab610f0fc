"""Several runs of one phase trained together as one stacked model (a group run).

:class:`GroupTrainer` drives one :class:`~bnlab.train.loop.Trainer` per run for everything
but the arithmetic: each member restores and writes its own checkpoint (the single-run
format, so a run can resume alone or in a group), logs its own losses and hook records to
its own run directory, and checks its own losses for NaN. The step itself is the caller's:
one function that updates every member's model at once (e.g. a
:class:`~bnlab.models.mlp_stack.StackedSigmoidMLP`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import Tensor

from bnlab.errors import BnlabError
from bnlab.train.loop import FitResult, Start, Trainer
from bnlab.train.progress import progress_bar
from bnlab.train.timing import charge

__all__ = ["GroupStateError", "GroupTrainer"]


class GroupStateError(BnlabError):
    """The members of a group cannot train together (their checkpoints are at different
    steps); the runs are to be trained one at a time instead."""


class GroupTrainer:
    """Train the phases of ``members`` together, one stacked step per step.

    Each step draws ``(x_k, y_k)`` from every member's own ``batches`` (its own order), calls
    ``step(xs, ys)``, which must update every member's parameters (held by the caller's
    stacked model) and return the K training losses, then does each member's bookkeeping
    exactly as :meth:`Trainer.fit` does after its own step (losses written every
    ``log_every``, hooks, checkpoints). Before any checkpoint ``sync()`` must copy the
    stacked state into each member's ``model`` (what the checkpoint saves); after a resume
    ``load()`` copies the members' restored models back into the stack.

    Time is charged evenly: each member's ``elapsed_s`` (checkpoints, :class:`FitResult`)
    grows by the group's wall time divided by K, and the open time ledger
    (:mod:`bnlab.train.timing`) gets the group's step time once.

    Args:
        members: one :class:`Trainer` per run, of equal ``num_steps``, ``log_every`` and
            ``checkpoint_every``; their ``model``/``optimizer`` are the separate networks the
            checkpoints hold.
        step: ``(xs, ys) -> losses`` with ``losses`` of shape ``(K,)``.
        sync, load: stack -> members and members -> stack (see above).
        progress, desc: one progress bar for the group.

    Raises:
        ValueError: no members, or members with different schedules.
        GroupStateError: from :meth:`fit`, when the members' checkpoints are at different
            steps.
    """

    def __init__(
        self,
        members: Sequence[Trainer],
        step: Callable[[list[Tensor], list[Tensor]], Tensor],
        *,
        sync: Callable[[], None],
        load: Callable[[], None],
        progress: bool = False,
        desc: str = "group",
    ) -> None:
        if not members:
            raise ValueError("a group needs at least one member; got none")
        schedules = {(m.num_steps, m.log_every, m.checkpoint_every, m.phase) for m in members}
        if len(schedules) != 1:
            raise ValueError(
                "the members of a group need one schedule (num_steps, log_every, "
                f"checkpoint_every, phase); got {sorted(schedules)}"
            )
        self.members = list(members)
        self.step = step
        self.sync = sync
        self.load = load
        self.progress = progress
        self.desc = desc

    def fit(self) -> list[FitResult]:
        """Run (or resume, or restore if finished) every member's phase; one
        :class:`FitResult` per member."""
        begun = [member._begin() for member in self.members]
        if all(isinstance(b, FitResult) for b in begun):
            self.load()
            return [b for b in begun if isinstance(b, FitResult)]
        starts = [b for b in begun if isinstance(b, Start)]
        if len(starts) != len(begun) or len({s.step for s in starts}) != 1:
            steps = [b.steps if isinstance(b, FitResult) else b.step for b in begun]
            raise GroupStateError(
                f"the runs of this group stopped at different steps {steps}; each resumes alone"
            )
        self.load()
        start_step, resumed_from = starts[0].step, starts[0].resumed_from
        elapsed_before = [s.elapsed_s for s in starts]
        first = self.members[0]
        k = len(self.members)
        t0 = time.perf_counter()
        steps_s = 0.0
        bar = progress_bar(first.num_steps, self.desc, enabled=self.progress, initial=start_step)
        try:
            for step in range(start_step + 1, first.num_steps + 1):
                t_step = time.perf_counter()
                xs, ys = [], []
                for member in self.members:
                    x, y = member.batches.next_batch()
                    xs.append(x)
                    ys.append(y)
                losses = self.step(xs, ys).detach()
                for i, member in enumerate(self.members):
                    member._losses.append(losses[i])
                steps_s += time.perf_counter() - t_step
                bar.update(1)
                for member, x, y in zip(self.members, xs, ys, strict=True):
                    member._after_step(step, x, y)
                if first._checkpoint_due(step):
                    self.sync()
                    share = (time.perf_counter() - t0) / k
                    for member, before in zip(self.members, elapsed_before, strict=True):
                        member._save_checkpoint(step, before + share)
        finally:
            bar.close()
            charge("train_steps", steps_s)
        share = (time.perf_counter() - t0) / k
        self.sync()
        trained = first.num_steps - start_step
        return [
            FitResult(first.num_steps, before + share, resumed_from, trained)
            for before in elapsed_before
        ]
