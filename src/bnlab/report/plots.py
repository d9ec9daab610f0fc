"""Plots for the report: one PNG per curve, mean over seeds with a min-max band.

A curve that names references (runs of the seed's own code) also draws their mean, dashed,
and their min-max band, hatched, in the colour of the variant they are the reference of.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no
display needed) and saved without a software/date stamp, so the same runs give the same
bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

__all__ = ["PALETTE", "curve_png", "png_bytes"]

#: Colours by variant position (matplotlib's tab10), so a variant keeps its colour in
#: every figure of an experiment.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def png_bytes(fig: MplFigure) -> bytes:
    """Render ``fig`` to PNG bytes with no metadata (deterministic output)."""
    # matplotlib is imported where it is used: every CLI command imports this module.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def curve_png(
    results: ExperimentResults, curve: Curve, variants: Sequence[str]
) -> tuple[bytes, int] | None:
    """Draw ``curve`` for ``variants``: the mean over seeds and a band from min to max.

    The curve's references are drawn dashed with a hatched min-max band beside them.

    Args:
        results: the experiment's runs.
        curve: what to draw.
        variants: the variants in the experiment's order (their colours follow it); the
            curve's own ``variants`` selects among them.

    Returns:
        ``(png, n_lines)`` (``n_lines`` counts bnlab's lines and the references'), or
        ``None`` when no finished run logged the curve's values.
    """
    from matplotlib.figure import Figure as MplFigure

    chosen = [v for v in variants if curve.variants is None or v in curve.variants]
    scale = 100.0 if curve.fmt == "pct" else 1.0
    fig = MplFigure(figsize=(7.5, 4.0))
    ax = fig.add_subplot()
    lines = 0
    for index, variant in enumerate(variants):
        if variant not in chosen:
            continue
        steps, per_run = results.curve(
            variant, curve.tag, curve.key, phase=curve.phase, smooth=curve.smooth
        )
        if not steps:
            continue
        columns = list(zip(*per_run, strict=True))
        mean = [scale * sum(col) / len(col) for col in columns]
        low = [scale * min(col) for col in columns]
        high = [scale * max(col) for col in columns]
        color = PALETTE[index % len(PALETTE)]
        ax.plot(steps, mean, color=color, linewidth=1.6, label=f"{variant} (n={len(per_run)})")
        if len(per_run) > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)
        lines += 1
    if lines == 0:
        return None
    for reference in curve.references:
        steps, per_run = reference.curves()
        if not steps:
            continue
        columns = list(zip(*per_run, strict=True))
        color = (
            PALETTE[variants.index(reference.variant) % len(PALETTE)]
            if reference.variant in variants
            else "#555555"
        )
        mean = [scale * sum(col) / len(col) for col in columns]
        ax.plot(
            steps,
            mean,
            color=color,
            linewidth=1.4,
            linestyle="--",
            label=f"{reference.label} (n={len(per_run)})",
        )
        lines += 1
        if len(per_run) > 1:
            ax.fill_between(
                steps,
                [scale * min(col) for col in columns],
                [scale * max(col) for col in columns],
                facecolor="none",
                edgecolor=color,
                hatch="///",
                alpha=0.45,
                linewidth=0,
            )
    ax.set_title(curve.title)
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel(curve.ylabel + (" (%)" if curve.fmt == "pct" else ""))
    if curve.logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return png_bytes(fig), lines
