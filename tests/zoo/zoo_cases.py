"""The zoo's test cases: one network with trained-looking batch norm, its float64 reference
runs and torch's float32 runs (computed once, cached on the case), and the assertion that
judges a run against them (``bnlab.bench.zoo.judge``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnlab.bench import zoo

#: The backends every cheap path runs with: "auto" (torch's kernel at these sizes) and
#: "fused" (bnlab's numba kernel forced at any size, so every path runs it).
BACKENDS = ("auto", "fused")

#: Seeds of the inputs: warm-up batches, the training step, a second input for artifacts.
WARM_UP_SEEDS = (10, 11)
STEP_SEED = 0
NEW_INPUT_SEED = 2


def models(fast: Collection[str] | None = None) -> list[Any]:
    """``pytest.param`` for every zoo network; those not in ``fast`` (all when None) are slow."""
    return [
        pytest.param(
            m.name,
            id=m.name,
            marks=() if fast is None or m.name in fast else (pytest.mark.slow,),
        )
        for m in zoo.ZOO
    ]


class ZooCase:
    """One zoo network, warmed up (``zoo.warm_up``) and in eval mode, with cached runs."""

    def __init__(self, entry: zoo.ZooModel) -> None:
        self.entry = entry
        self.model = zoo.warm_up(entry.build(), [entry.input(s) for s in WARM_UP_SEEDS])
        self._runs: dict[Any, Any] = {}

    @property
    def name(self) -> str:
        return self.entry.name

    def fresh(self) -> nn.Module:
        """A deep copy of the warmed-up torch model (eval mode); the case keeps its own."""
        return copy.deepcopy(self.model)

    def step_data(self) -> tuple[Tensor, Tensor]:
        return self.entry.input(STEP_SEED), self.entry.target(STEP_SEED)

    def step_reference(self) -> dict[str, Tensor]:
        """The training step of the float64 copy of the torch model (its kinks' branches
        recorded for :meth:`own_reference`)."""
        if "step64" not in self._runs:
            x, target = self.step_data()
            with zoo.record_kinks() as decisions:
                self._runs["step64"] = zoo.training_step(self.fresh().double(), x.double(), target)
            self._runs["kinks64"] = decisions
        return self._runs["step64"]

    def own_reference(self, rerun: Callable[[], object]) -> dict[str, Tensor]:
        """The float64 step that took the branches ``rerun`` (a float32 step) takes.

        ``rerun`` runs again under ``zoo.record_kinks``; where it took the float64
        run's branches everywhere (or cannot be replayed), that is the reference.
        """
        reference = self.step_reference()
        with zoo.record_kinks() as decisions:
            rerun()
        if zoo.same_decisions(decisions, self._runs["kinks64"]):
            return reference
        x, target = self.step_data()
        try:
            with zoo.replay_kinks(decisions):
                return zoo.training_step(self.fresh().double(), x.double(), target)
        except zoo.KinkReplayError:
            return reference

    def step_torch_runs(self) -> list[Judged]:
        """torch's float32 training step with its ATen kernel and with its decomposition,
        each with the float64 reference that took its branches."""
        if "step32" not in self._runs:
            x, target = self.step_data()

            def native() -> dict[str, Tensor]:
                return zoo.training_step(self.fresh(), x, target)

            def decomposed() -> dict[str, Tensor]:
                with zoo.decomposed_batch_norm():
                    return zoo.training_step(self.fresh(), x, target)

            self._runs["step32"] = [
                Judged(run(), self.own_reference(run)) for run in (native, decomposed)
            ]
        return self._runs["step32"]

    def eval_input(self, batch: int | None = None) -> Tensor:
        return self.entry.input(NEW_INPUT_SEED, batch=batch)

    @torch.no_grad()
    def eval_reference(self, batch: int | None = None) -> dict[str, Tensor]:
        """The float64 torch model's eval output on :meth:`eval_input`."""
        key = ("eval64", batch)
        if key not in self._runs:
            x = self.eval_input(batch).double()
            self._runs[key] = {"output": self.fresh().double().eval()(x)}
        return self._runs[key]

    @torch.no_grad()
    def eval_baselines(self, batch: int | None = None) -> list[dict[str, Tensor]]:
        """torch's float32 eval output, ATen kernel and decomposition."""
        key = ("eval32", batch)
        if key not in self._runs:
            x = self.eval_input(batch)
            native = {"output": self.fresh().eval()(x)}
            with zoo.decomposed_batch_norm():
                decomposed = {"output": self.fresh().eval()(x)}
            self._runs[key] = [native, decomposed]
        return self._runs[key]

    def cached(self, key: Any, make: Any) -> Any:
        """``make()`` once per case and key (torch's own run on a path, for instance)."""
        if key not in self._runs:
            self._runs[key] = make()
        return self._runs[key]


@dataclass(frozen=True)
class Judged:
    """A float32 run and the float64 run it is measured against."""

    result: Mapping[str, Tensor]
    reference: Mapping[str, Tensor]


def judged_failures(
    candidate: Judged, torch_runs: Sequence[Judged], *, target: Tensor | None = None
) -> str:
    """ "" when every tensor of ``candidate`` is within 2x torch's float32 error
    (``zoo.judge_errors``), else what is not, worst first.

    With ``target`` (a training step), the loss may also be off by what the output's
    bound implies (``zoo.loss_allowance``).
    """
    torch_errors = [zoo.errors_against(r.reference, r.result) for r in torch_runs]
    errors = zoo.errors_against(candidate.reference, candidate.result)
    allowances: dict[str, float] = {}
    if target is not None and "output" in errors:
        (output,) = [v for v in zoo.judge_errors(torch_errors, errors) if v.key == "output"]
        allowances["loss"] = zoo.loss_allowance(candidate.reference, target, output.bound)
    verdicts = zoo.judge_errors(torch_errors, errors, allowances=allowances)
    failed = [v for v in verdicts if not v.ok]
    if not failed:
        return ""
    worst = sorted(failed, key=lambda v: v.error / max(v.bound, 1e-300), reverse=True)
    lines = "\n  ".join(str(v) for v in worst[:8])
    return (
        f"{len(failed)} of {len(verdicts)} tensors further from float64 than 2x torch's "
        f"float32 error; worst first:\n  {lines}"
    )


def plain(
    reference: Mapping[str, Tensor], baselines: Sequence[Mapping[str, Tensor]]
) -> list[Judged]:
    """torch's runs measured against one float64 run (eval mode: no kink changes a gradient)."""
    return [Judged(b, reference) for b in baselines]


def assert_judged(
    candidate: Judged,
    torch_runs: Sequence[Judged],
    *,
    target: Tensor | None = None,
    what: str = "",
) -> None:
    """Fail with :func:`judged_failures`'s text unless it is empty."""
    failures = judged_failures(candidate, torch_runs, target=target)
    if failures:
        pytest.fail(f"{what}: {failures}", pytrace=False)


def assert_step_judged(
    case: ZooCase,
    result: Mapping[str, Tensor],
    rerun: Callable[[], object] | None,
    *,
    extra: Sequence[Judged] = (),
    what: str = "training step",
) -> None:
    """Judge a training step against the float64 step; where it misses, against the float64
    step that took its kinks' branches (``rerun`` repeats the float32 step to record them)."""
    _, target = case.step_data()
    torch_runs = [*case.step_torch_runs(), *extra]
    failures = judged_failures(Judged(result, case.step_reference()), torch_runs, target=target)
    if failures and rerun is not None:
        own = Judged(result, case.own_reference(rerun))
        failures = judged_failures(own, torch_runs, target=target)
    if failures:
        pytest.fail(f"{what}: {failures}", pytrace=False)
