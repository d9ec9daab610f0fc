"""A final metric against a swept value (batch size, learning rate): one figure (mean over
seeds, min-max band) and one table, for the experiments beyond the seeds.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Figure, Table
from bnlab.report.stats import format_summary, summarize

__all__ = ["sweep_blocks"]


def sweep_blocks(
    results: ExperimentResults,
    groups: Mapping[str, Mapping[float, str]],
    key: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    name: str,
    group_label: str = "norm",
    logx: bool = True,
    fmt: str = "pct",
    extra: Callable[[str], str] | None = None,
) -> list[Figure | Table]:
    """A figure (mean over seeds, min-max band) and a table of ``key`` against a sweep.

    Args:
        groups: group label -> {swept value -> variant name}, e.g.
            ``{"BN": {2: "bn-b2", 4: "bn-b4"}, "GN": {...}}``.
        group_label: the table's first column header.
        key: the final metric plotted.
        extra: optional ``variant -> text`` for an extra table column (e.g. divergences).
    """
    from matplotlib.figure import Figure as MplFigure

    from bnlab.report.plots import PALETTE, png_bytes

    fig = MplFigure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    xs_all = sorted({x for points in groups.values() for x in points})
    rows = []
    scale = 100.0 if fmt == "pct" else 1.0
    for i, (label, points) in enumerate(groups.items()):
        xs, mean, lo, hi = [], [], [], []
        for x in sorted(points):
            values = results.values(points[x], key)
            if values:
                xs.append(x)
                mean.append(scale * sum(values) / len(values))
                lo.append(scale * min(values))
                hi.append(scale * max(values))
        color = PALETTE[i % len(PALETTE)]
        if xs:
            ax.plot(xs, mean, marker="o", color=color, label=label)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
        cells = [label]
        for x in xs_all:
            variant = points.get(x)
            text = (
                ""
                if variant is None
                else format_summary(summarize(results.values(variant, key)), fmt)
            )
            if variant is not None and extra is not None:
                text += extra(variant)
            cells.append(text or "-")
        rows.append(tuple(cells))
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs_all)
    ax.set_xticklabels([f"{x:g}" for x in xs_all])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if fmt == "pct" else ""))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO(png_bytes(fig))
    table = Table(
        (group_label, *(f"{x:g}" for x in xs_all)),
        tuple(rows),
        caption=f"{ylabel}: mean ± sd over seeds (n) per {xlabel}",
    )
    return [Figure(buffer.getvalue(), f"{title} (mean over seeds, band: min to max)", name), table]
