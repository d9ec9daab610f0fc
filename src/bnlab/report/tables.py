"""Ready-made tables for experiments' extra report blocks (e.g. a seed's printed log)."""

from __future__ import annotations

from collections.abc import Sequence

from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Table
from bnlab.report.stats import Summary, format_summary, format_value, summarize

__all__ = ["band_table", "steps_table"]


def steps_table(
    results: ExperimentResults,
    variants: Sequence[str],
    tag: str,
    key: str,
    steps: Sequence[int],
    headers: Sequence[str],
    *,
    fmt: str = "pct",
    caption: str = "",
) -> Table:
    """One row per variant: the logged ``key`` of records ``tag`` at each of ``steps``.

    Cells are ``mean ± sd`` over the finished seeds that logged that step (``–`` if none).

    Raises:
        ValueError: ``steps`` and ``headers`` differ in length.
    """
    if len(steps) != len(headers):
        raise ValueError(
            f"steps_table needs one header per step; got {len(steps)} steps and "
            f"{len(headers)} headers"
        )
    rows = []
    for variant in variants:
        if not results.complete(variant):
            continue
        cells = [variant]
        for step in steps:
            cells.append(format_summary(summarize(results.values_at(variant, tag, key, step)), fmt))
        rows.append(tuple(cells))
    return Table(("variant", *headers), tuple(rows), caption)


def band_table(
    results: ExperimentResults,
    reference: str,
    variants: Sequence[str],
    key: str,
    *,
    slack: float,
    fmt: str = "pct",
    caption: str = "",
) -> Table:
    """How each of ``variants`` compares with ``reference`` on the final metric ``key``.

    The reference band is ``[min - slack, max + slack]`` over the reference's finished
    seeds. One row for the reference, then one per variant with finished seeds: its
    ``mean ± sd``, its range, the difference of means from the reference, and whether
    every one of its seeds lies inside the band (``yes``/``no``). Variants without a
    finished seed are left out; a reference without one gives a table with no rows.

    >>> band_table(ExperimentResults("x"), "bn", ["bn@2proc-syncbn"], "acc", slack=0.01).rows
    ()
    """
    columns = ("variant", "mean ± sd", "range", "difference of means", "every seed in band")
    ref = summarize(results.values(reference, key))
    if ref is None:
        return Table(columns, (), caption)
    low, high = ref.min - slack, ref.max + slack
    rows = [(reference, format_summary(ref, fmt), _range(ref, fmt), "(reference)", "")]
    for variant in variants:
        values = results.values(variant, key)
        summary = summarize(values)
        if summary is None:
            continue
        inside = all(low <= v <= high for v in values)
        rows.append(
            (
                variant,
                format_summary(summary, fmt),
                _range(summary, fmt),
                _signed(summary.mean - ref.mean, fmt),
                "yes" if inside else "no",
            )
        )
    band = f"band = [{format_value(low, fmt)}, {format_value(high, fmt)}]"
    return Table(columns, tuple(rows), f"{caption} ({band})" if caption else band)


def _range(summary: Summary, fmt: str) -> str:
    return f"{format_value(summary.min, fmt)} – {format_value(summary.max, fmt)}"


def _signed(value: float, fmt: str) -> str:
    text = format_value(abs(value), fmt)
    return f"+{text}" if value >= 0 else f"−{text}"
