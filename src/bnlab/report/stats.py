"""Statistics over seeds and number formatting for the report tables.

Tables show ``mean ± sd`` (sample standard deviation, n - 1) over the seeds that finished,
with ``n``; a single seed shows its value alone. Formatting is deterministic so a rebuilt
report has byte-identical tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "format_summary", "format_value", "summarize"]


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
