"""Statistics over seeds and number formatting for the report tables.

Tables show ``mean ± sd`` (sample standard deviation, n - 1) over the seeds that finished,
with ``n``; a single seed shows its value alone. Formatting is deterministic so a rebuilt
report has byte-identical tables. :func:`compare_samples` is the two-sample test behind the
verdicts that judge bnlab against the seeds' own code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ALPHA",
    "Comparison",
    "Summary",
    "compare_samples",
    "format_range",
    "format_summary",
    "format_value",
    "summarize",
]

#: Significance level of the two-sample test that judges bnlab against a reference.
ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation, minimum and maximum of ``n`` values.

    >>> summarize([0.9, 0.92, 0.94])
    Summary(n=3, mean=0.92, sd=0.02, min=0.9, max=0.94)
    """

    n: int
    mean: float
    sd: float
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary | None:
    """Return the :class:`Summary` of the finite ``values`` (``None`` if there are none).

    Non-finite values (a diverged run) are excluded from the statistics; callers that
    need to flag them check before summarizing.
    """
    xs = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return Summary(n, round(mean, 12), round(sd, 12), min(xs), max(xs))


def format_value(value: float | None, fmt: str = "float") -> str:
    """Format one number: ``"pct"`` as a percentage with 2 decimals, ``"seconds"`` with 1.

    >>> format_value(0.91234, "pct"), format_value(12.345, "seconds"), format_value(None)
    ('91.23%', '12.3 s', '–')
    """
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    if fmt == "pct":
        return f"{100 * value:.2f}%"
    if fmt == "seconds":
        return f"{value:.1f} s"
    if fmt == "int":
        return f"{value:.0f}"
    return f"{value:.4g}"


def format_summary(summary: Summary | None, fmt: str = "float") -> str:
    """Format ``mean ± sd`` (percent points for ``"pct"``); a single value alone.

    >>> format_summary(summarize([0.9, 0.92, 0.94]), "pct")
    '92.00 ± 2.00%'
    """
    if summary is None:
        return "–"
    if summary.n == 1:
        return format_value(summary.mean, fmt)
    if fmt == "pct":
        return f"{100 * summary.mean:.2f} ± {100 * summary.sd:.2f}%"
    if fmt == "seconds":
        return f"{summary.mean:.1f} ± {summary.sd:.1f} s"
    return f"{format_value(summary.mean, fmt)} ± {format_value(summary.sd, fmt)}"


def format_range(summary: Summary | None, fmt: str = "float") -> str:
    """``mean ± sd [min, max]``: :func:`format_summary` with the range (one value alone).

    >>> format_range(summarize([0.9, 0.92, 0.94]), "pct")
    '92.00 ± 2.00% [90.00, 94.00]'
    """
    if summary is None or summary.n == 1:
        return format_summary(summary, fmt)
    if fmt == "pct":  # the unit is already after the mean ± sd
        low, high = f"{100 * summary.min:.2f}", f"{100 * summary.max:.2f}"
    else:
        low, high = format_value(summary.min, fmt), format_value(summary.max, fmt)
    return f"{format_summary(summary, fmt)} [{low}, {high}]"


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare_samples` on samples ``a`` (bnlab) and ``b`` (reference).

    Attributes:
        n_a, n_b: the sample sizes.
        difference: ``mean(a) - mean(b)``.
        p: the two-sided permutation p-value of the difference of means.
        min_p: the smallest p-value these sample sizes can give; when it exceeds ``alpha``
            no outcome could reject, so the samples cannot decide.
        alpha: the level.
    """

    n_a: int
    n_b: int
    difference: float
    p: float
    min_p: float
    alpha: float

    @property
    def decidable(self) -> bool:
        """Whether samples of these sizes could show a difference at level ``alpha``."""
        return self.min_p <= self.alpha

    @property
    def differ(self) -> bool:
        """The samples differ at level ``alpha`` (``p <= alpha``)."""
        return self.p <= self.alpha


def compare_samples(
    a: Sequence[float], b: Sequence[float], *, alpha: float = ALPHA, n_resamples: int = 19_999
) -> Comparison | None:
    """Two-sample, two-sided permutation test of ``mean(a) == mean(b)``.

    The statistic is the difference of means; its null distribution comes from reassigning
    the pooled values to the two groups (``scipy.stats.permutation_test``, independent
    samples). It is exact when the number of distinct splits is at most ``n_resamples``,
    otherwise a Monte Carlo estimate with a fixed generator, so the same samples always
    give the same p (the report is rebuilt byte for byte).

    Returns:
        The :class:`Comparison`, or ``None`` when either sample has fewer than 2 finite
        values (no test is possible).

    >>> c = compare_samples([0.1, 0.2, 0.3], [0.7, 0.8, 0.9, 1.0])
    >>> round(c.p, 4), c.differ
    (0.0571, False)
    """
    import numpy as np
    from scipy import stats

    xs = np.array([v for v in a if math.isfinite(v)], dtype=np.float64)
    ys = np.array([v for v in b if math.isfinite(v)], dtype=np.float64)
    if len(xs) < 2 or len(ys) < 2:
        return None
    difference = float(xs.mean() - ys.mean())
    splits = math.comb(len(xs) + len(ys), len(xs))
    # The two-sided p of the most extreme split: itself and its mirror image (when the
    # groups have equal sizes the mirror is a different split with the same |statistic|).
    min_p = min(1.0, 2.0 / splits)
    if np.ptp(np.concatenate([xs, ys])) == 0.0:
        return Comparison(len(xs), len(ys), difference, 1.0, min_p, alpha)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    result = stats.permutation_test(
        (xs, ys),
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(0),
    )
    return Comparison(len(xs), len(ys), difference, float(result.pvalue), min_p, alpha)
