"""Ready-made claim checks: judged against the seed's own code where a reference exists.

Two rules, and the report says which one each verdict used and on how many seeds:

* **Against the reference** (:func:`against_reference`): a quantity measured on bnlab's
  finished seeds is compared with the same quantity over the runs of the seed's own TF1
  code (:class:`bnlab.report.reference.Reference`) by a two-sided two-sample permutation
  test of the difference of means at level :data:`bnlab.report.stats.ALPHA` (0.05). Not
  significantly different: the claim **holds** (consistent with the original); different:
  **bnlab better / worse than the original** (in the claim's direction). Sample sizes that
  cannot reach the level leave it **undecided**. The literal threshold is shown beside it,
  applied to both samples, but does not decide.
* **Literal threshold** (:func:`every_run`, :func:`every_run_at_step`), only where no
  reference exists (seeds 003, 004, the experiments beyond the seeds): the claim holds only
  if it holds for every finished seed of every variant it names.

With no finished run to judge, the verdict is ``None`` ("not measured"), never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bnlab.report.reference import Reference
from bnlab.report.results import ExperimentResults, RunRecord
from bnlab.report.spec import Verdict
from bnlab.report.stats import (
    ALPHA,
    compare_samples,
    format_range,
    format_summary,
    format_value,
    summarize,
)

__all__ = [
    "LITERAL_RULE",
    "REFERENCE_RULE",
    "Quantity",
    "Threshold",
    "against_reference",
    "at_step",
    "describe",
    "describe_sample",
    "every_run",
    "every_run_at_step",
    "final",
    "paired",
]

#: The two verdict rules, in words (the report prints them).
REFERENCE_RULE = (
    "Where the seed's own code was measured (seeds 000-002), a claim is judged on the two "
    "distributions: a two-sided two-sample permutation test of the difference of means "
    f"(bnlab's seeds vs the original's runs, exact or 19,999 resamples) at level {ALPHA}. "
    "p > level: the claim holds (bnlab consistent with the original); p <= level: bnlab "
    "better or worse than the original, in the claim's direction. Sample sizes whose "
    "smallest possible p exceeds the level leave the claim undecided. The literal "
    "threshold of the claim is shown beside it, on both samples, and does not decide."
)
LITERAL_RULE = (
    "Where no reference exists (seeds 003 and 004, and the experiments beyond the seeds), "
    "the literal threshold decides: the claim holds only if every finished seed of every "
    "variant it names passes."
)

Check = Callable[[ExperimentResults], Verdict]


def paired_runs(results: ExperimentResults, a: str, b: str) -> list[tuple[RunRecord, RunRecord]]:
    """Finished runs of variants ``a`` and ``b`` with the same seed (so the same initial
    weights and batch order), in ``a``'s order: the one pairing every paired claim uses.

    >>> paired_runs(ExperimentResults("x"), "bn", "no-bn")
    []
    """
    other = {run.seed: run for run in results.complete(b)}
    return [(run, other[run.seed]) for run in results.complete(a) if run.seed in other]


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
    threshold = Threshold(above, below)
    values = [x for xs in per_variant.values() for x in xs]
    passed = sum(threshold.passes(x) for x in values)
    basis = (
        f"literal threshold {threshold.text(fmt)} on every seed (no reference run of the "
        f"seed's code): {passed}/{len(values)} seeds pass"
    )
    if any(not xs for xs in per_variant.values()):
        return Verdict(measured, None, basis=basis)
    return Verdict(measured, passed == len(values), basis=basis)


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
        return Verdict(f"at step {step}: {verdict.measured}", verdict.holds, basis=verdict.basis)

    return check


def describe_sample(values: Sequence[float], fmt: str, noun: str = "runs") -> str:
    """``"94.58 ± 1.04% [92.06, 96.04] (n=10 runs)"`` (``"no runs"`` when empty)."""
    summary = summarize(values)
    if summary is None:
        return f"no {noun}"
    return f"{format_range(summary, fmt)} (n={summary.n} {noun})"


@dataclass(frozen=True)
class Quantity:
    """What a claim measures on bnlab's runs: one value per finished seed.

    Attributes:
        label: the quantity in words (``"bn: validation accuracy after batch 500"``).
        values: results -> the values, one per finished seed that has one.
    """

    label: str
    values: Callable[[ExperimentResults], list[float]]


def final(variant: str, key: str, label: str = "") -> Quantity:
    """The final metric ``key`` of ``variant`` (``result.json``), one value per finished seed."""
    return Quantity(label or f"{variant}: {key}", lambda results: results.values(variant, key))


def at_step(variant: str, tag: str, key: str, step: int, label: str = "") -> Quantity:
    """The logged ``key`` of records ``tag`` at ``step`` of ``variant``, per finished seed."""
    return Quantity(
        label or f"{variant}: {tag} {key} at step {step}",
        lambda results: results.values_at(variant, tag, key, step),
    )


def paired(a: str, b: str, key: str, label: str = "") -> Quantity:
    """Per seed that finished both: final metric ``key`` of variant ``a`` minus ``b``'s.

    The variants of one seed share their initial batches, so the difference removes most
    of the seed-to-seed variation (the reference takes the same difference per run).
    """

    def values(results: ExperimentResults) -> list[float]:
        other = {run.seed: run.metric(key) for run in results.complete(b)}
        out = []
        for run in results.complete(a):
            x, y = run.metric(key), other.get(run.seed)
            if x is not None and y is not None:
                out.append(x - y)
        return out

    return Quantity(label or f"{a} − {b}: {key}", values)


@dataclass(frozen=True)
class Threshold:
    """A claim's literal threshold: every value ``> above`` and/or ``< below``.

    >>> Threshold(above=0.9).passes(0.95), Threshold(above=0.9).text("pct")
    (True, '> 90.00%')
    """

    above: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        if self.above is None and self.below is None:
            raise ValueError("a Threshold needs above=... and/or below=...")

    def passes(self, value: float) -> bool:
        """Whether ``value`` lies beyond the threshold(s)."""
        return (self.above is None or value > self.above) and (
            self.below is None or value < self.below
        )

    def text(self, fmt: str) -> str:
        """The threshold in words, formatted like the values."""
        parts = []
        if self.above is not None:
            parts.append(f"> {format_value(self.above, fmt)}")
        if self.below is not None:
            parts.append(f"< {format_value(self.below, fmt)}")
        return " and ".join(parts)


def _signed(value: float, fmt: str) -> str:
    text = f"{100 * abs(value):.2f} points" if fmt == "pct" else format_value(abs(value), fmt)
    return ("+" if value >= 0 else "−") + text


def against_reference(
    quantity: Quantity,
    reference: Reference,
    *,
    literal: Threshold | Check,
    better: str | None = "higher",
    fmt: str = "pct",
    alpha: float = ALPHA,
) -> Check:
    """A check that judges ``quantity`` on bnlab's seeds against ``reference``'s runs.

    The rule is :data:`REFERENCE_RULE`: a permutation test of the difference of means
    (:func:`bnlab.report.stats.compare_samples`) at level ``alpha``. The verdict's
    ``outcome`` is ``"holds: consistent with the original"`` (``holds=True``),
    ``"bnlab better than the original"`` (``True``), ``"bnlab worse than the original"``
    (``False``), ``"bnlab differs from the original"`` (``False``; ``better=None``), or
    ``"undecided: ..."`` (``None``) when either side has fewer than 2 values or the sizes
    cannot reach ``alpha``. ``basis`` holds the test, the seeds on each side, and the
    ``literal`` criterion: a :class:`Threshold` applied to both samples, or a literal
    check of bnlab's runs whose verdict is shown.

    Args:
        better: ``"higher"`` or ``"lower"``: the direction in which the claim improves;
            ``None`` when neither direction is better.

    Raises:
        ValueError: ``better`` is not ``"higher"``, ``"lower"`` or ``None``.
    """
    if better not in ("higher", "lower", None):
        raise ValueError(f"better must be 'higher', 'lower' or None; got {better!r}")

    def check(results: ExperimentResults) -> Verdict:
        ours = quantity.values(results)
        theirs = reference.values()
        ref_text = describe_sample(theirs, fmt)
        if reference.label:
            ref_text = f"{reference.label}: {ref_text}"
        measured = f"{quantity.label}: {describe_sample(ours, fmt, 'seeds')}"
        if isinstance(literal, Threshold):
            passed = sum(literal.passes(v) for v in ours)
            passed_ref = sum(literal.passes(v) for v in theirs)
            literal_text = (
                f"literal {literal.text(fmt)}: bnlab {passed}/{len(ours)} seeds, "
                f"original {passed_ref}/{len(theirs)} runs"
            )
        else:
            literal_verdict = literal(results)
            state = {True: "holds", False: "does not hold", None: "not measured"}
            literal_text = (
                f"literal criterion {state[literal_verdict.holds]} ({literal_verdict.measured})"
            )
        if not ours:
            return Verdict(measured, None, ref_text, "", f"no finished run; {literal_text}")
        comparison = compare_samples(ours, theirs, alpha=alpha)
        sizes = f"n = {len(ours)} bnlab seeds vs {len(theirs)} original runs"
        if comparison is None:
            return Verdict(
                measured,
                None,
                ref_text,
                "undecided: too few seeds for the test",
                f"the test needs >= 2 values on each side; {sizes}; {literal_text}",
            )
        test = (
            f"permutation test p = {comparison.p:.3f} (level {alpha}), difference of means "
            f"{_signed(comparison.difference, fmt)}; {sizes}"
        )
        if not comparison.decidable:
            return Verdict(
                measured,
                None,
                ref_text,
                "undecided: too few seeds for the test",
                f"smallest possible p = {comparison.min_p:.3f} > {alpha}; {sizes}; {literal_text}",
            )
        basis = f"{test}; {literal_text}"
        if not comparison.differ:
            return Verdict(measured, True, ref_text, "holds: consistent with the original", basis)
        if better is None:
            return Verdict(measured, False, ref_text, "bnlab differs from the original", basis)
        bnlab_better = (comparison.difference > 0) == (better == "higher")
        if bnlab_better:
            return Verdict(measured, True, ref_text, "bnlab better than the original", basis)
        return Verdict(measured, False, ref_text, "bnlab worse than the original", basis)

    return check


def paired_differences(
    results: ExperimentResults, minuend: str, subtrahend: str, key: str = "test_accuracy"
) -> list[float]:
    """``key(minuend) - key(subtrahend)`` for every seed finished in both variants."""
    gaps = []
    for run_a, run_b in sorted(paired_runs(results, minuend, subtrahend), key=lambda p: p[0].seed):
        a, b = run_a.metric(key), run_b.metric(key)
        if a is not None and b is not None:
            gaps.append(float(a) - float(b))
    return gaps


def paired_check(
    minuend: str,
    subtrahend: str,
    holds: Callable[[float], bool],
    key: str = "test_accuracy",
    fmt: str = "pct",
) -> Callable[[ExperimentResults], Verdict]:
    """A claim check on per-seed differences ``key(minuend) - key(subtrahend)`` (same seed,
    so the same initial weights and batch order): it holds when ``holds(gap)`` is true for
    every seed; with no seed finished in both variants the verdict is "not measured".

    >>> check = paired_check("gn-b2", "bn-b2", lambda gap: gap > 0.05)
    >>> check(ExperimentResults("x")).holds is None
    True
    """

    def check(results: ExperimentResults) -> Verdict:
        gaps = paired_differences(results, minuend, subtrahend, key)
        label = f"{minuend} − {subtrahend}, per seed"
        if not gaps:
            return Verdict(f"{label}: no seed finished in both", None)
        return Verdict(describe(label, gaps, fmt), all(holds(g) for g in gaps))

    return check
