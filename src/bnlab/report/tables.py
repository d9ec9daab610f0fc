"""Ready-made tables for experiments' extra report blocks (e.g. a seed's printed log)."""

from __future__ import annotations

from collections.abc import Sequence

from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Table
from bnlab.report.stats import format_summary, summarize

__all__ = ["steps_table"]


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
