"""Ready-made claim checks: thresholds on final metrics or logged values, over all seeds.

A claim holds only if it holds for every finished seed of every variant it names (the
seeds ran once; we ask that the effect does not depend on the seed). With no finished run
to judge, the verdict is ``None`` ("not measured"), never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Verdict
from bnlab.report.stats import format_summary, format_value, summarize

__all__ = ["describe", "every_run", "every_run_at_step"]

Check = Callable[[ExperimentResults], Verdict]


def describe(variant: str, values: Sequence[float], fmt: str, *, worst: str | None = None) -> str:
    """``"bn: 97.12 ± 0.20% (n=3, min 96.90%)"``: a variant's values for a measured column.

    Args:
        worst: ``"min"`` or ``"max"`` to add the extreme value that decides a threshold.
    """
    summary = summarize(values)
    if summary is None:
        return f"{variant}: no finished run"
    extra = ""
    if worst == "min" and summary.n > 1:
        extra = f", min {format_value(summary.min, fmt)}"
    elif worst == "max" and summary.n > 1:
        extra = f", max {format_value(summary.max, fmt)}"
    return f"{variant}: {format_summary(summary, fmt)} (n={summary.n}{extra})"


def _judge(
    per_variant: dict[str, list[float]], above: float | None, below: float | None, fmt: str
) -> Verdict:
    if above is None and below is None:
        raise ValueError("give a threshold: above=... or below=...")
    worst = "min" if above is not None else "max"
    measured = "; ".join(describe(v, xs, fmt, worst=worst) for v, xs in per_variant.items())
    if any(not xs for xs in per_variant.values()):
        return Verdict(measured, None)
    values = [x for xs in per_variant.values() for x in xs]
    holds = all((above is None or x > above) and (below is None or x < below) for x in values)
    return Verdict(measured, holds)


def every_run(
    variants: Sequence[str],
    key: str,
    *,
    above: float | None = None,
    below: float | None = None,
    fmt: str = "pct",
) -> Check:
    """A check that final metric ``key`` is ``> above`` and/or ``< below`` in every run.

    >>> check = every_run(["bn"], "test_accuracy", above=0.9)
    >>> check(ExperimentResults("x")).holds is None
    True
    """

    def check(results: ExperimentResults) -> Verdict:
        return _judge({v: results.values(v, key) for v in variants}, above, below, fmt)

    return check


def every_run_at_step(
    variants: Sequence[str],
    tag: str,
    key: str,
    step: int,
    *,
    above: float | None = None,
    below: float | None = None,
    fmt: str = "pct",
) -> Check:
    """Like :func:`every_run`, on the logged ``key`` of records ``tag`` at ``step``."""

    def check(results: ExperimentResults) -> Verdict:
        per_variant = {v: results.values_at(v, tag, key, step) for v in variants}
        verdict = _judge(per_variant, above, below, fmt)
        return Verdict(f"at step {step}: {verdict.measured}", verdict.holds)

    return check
