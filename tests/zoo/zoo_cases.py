"""The zoo's test cases: one network with trained-looking batch norm, its float64 reference
runs and torch's float32 runs (computed once, cached on the case), and the assertion that
judges a run against them (``bnlab.bench.zoo.judge``)."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
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
        """The training step of the float64 copy of the torch model."""
        if "step64" not in self._runs:
            x, target = self.step_data()
            self._runs["step64"] = zoo.training_step(self.fresh().double(), x.double(), target)
        return self._runs["step64"]  # type: ignore[no-any-return]

    def step_baselines(self) -> list[dict[str, Tensor]]:
        """torch's float32 training step with its ATen kernel and with its decomposition."""
        if "step32" not in self._runs:
            x, target = self.step_data()
            native = zoo.training_step(self.fresh(), x, target)
            with zoo.decomposed_batch_norm():
                decomposed = zoo.training_step(self.fresh(), x, target)
            self._runs["step32"] = [native, decomposed]
        return self._runs["step32"]  # type: ignore[no-any-return]

    def eval_input(self, batch: int | None = None) -> Tensor:
        return self.entry.input(NEW_INPUT_SEED, batch=batch)

    @torch.no_grad()
    def eval_reference(self, batch: int | None = None) -> dict[str, Tensor]:
        """The float64 torch model's eval output on :meth:`eval_input`."""
        key = ("eval64", batch)
        if key not in self._runs:
            x = self.eval_input(batch).double()
            self._runs[key] = {"output": self.fresh().double().eval()(x)}
        return self._runs[key]  # type: ignore[no-any-return]

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
        return self._runs[key]  # type: ignore[no-any-return]

    def cached(self, key: Any, make: Any) -> Any:
        """``make()`` once per case and key (torch's own run on a path, for instance)."""
        if key not in self._runs:
            self._runs[key] = make()
        return self._runs[key]


def judged_failures(
    reference: Mapping[str, Tensor],
    baselines: Sequence[Mapping[str, Tensor]],
    candidate: Mapping[str, Tensor],
    *,
    target: Tensor | None = None,
) -> str:
    """ "" when every tensor of ``candidate`` is within 2x torch's float32 error
    (``zoo.judge``), else what is not, worst first.

    With ``target`` (a training step), the loss may also be off by what the output's
    bound implies (``zoo.loss_allowance``).
    """
    allowances: dict[str, float] = {}
    if target is not None and "output" in reference:
        (output,) = [v for v in zoo.judge(reference, baselines, candidate) if v.key == "output"]
        allowances["loss"] = zoo.loss_allowance(reference, target, output.bound)
    verdicts = zoo.judge(reference, baselines, candidate, allowances=allowances)
    failed = [v for v in verdicts if not v.ok]
    if not failed:
        return ""
    worst = sorted(failed, key=lambda v: v.error / max(v.bound, 1e-300), reverse=True)
    lines = "\n  ".join(str(v) for v in worst[:8])
    return (
        f"{len(failed)} of {len(verdicts)} tensors further from float64 than 2x torch's "
        f"float32 error; worst first:\n  {lines}"
    )


def assert_judged(
    reference: Mapping[str, Tensor],
    baselines: Sequence[Mapping[str, Tensor]],
    candidate: Mapping[str, Tensor],
    *,
    target: Tensor | None = None,
    what: str = "",
) -> None:
    """Fail with :func:`judged_failures`'s text unless it is empty."""
    failures = judged_failures(reference, baselines, candidate, target=target)
    if failures:
        pytest.fail(f"{what}: {failures}", pytrace=False)
