"""Reads run directories from disk; plots (matplotlib) and the HTML / Markdown report.

Experiments describe what the report shows with the types of :mod:`bnlab.report.spec`;
:func:`build_report` turns run directories into ``report.html``, ``report.md`` and
``report.json``.
"""

from __future__ import annotations

from bnlab.report.build import (
    ReportFiles,
    build_document,
    build_report,
    experiment_section,
    verdict_text,
)
from bnlab.report.claims import (
    Quantity,
    Threshold,
    against_reference,
    at_step,
    describe,
    every_run,
    every_run_at_step,
    final,
    paired,
)
from bnlab.report.plots import curve_png, png_bytes
from bnlab.report.reference import Reference, SeriesReference, load_reference
from bnlab.report.render import VERDICT_TEXT, Document, Section, render_html, render_markdown
from bnlab.report.results import NOT_RUN, ExperimentResults, RunRecord, load_results
from bnlab.report.spec import (
    Block,
    Claim,
    Curve,
    Figure,
    Metric,
    Paragraph,
    Reportable,
    Table,
    Verdict,
)
from bnlab.report.stats import (
    Comparison,
    Summary,
    compare_samples,
    format_summary,
    format_value,
    summarize,
)
from bnlab.report.tables import steps_table

__all__ = [
    "NOT_RUN",
    "VERDICT_TEXT",
    "Block",
    "Claim",
    "Comparison",
    "Curve",
    "Document",
    "ExperimentResults",
    "Figure",
    "Metric",
    "Paragraph",
    "Quantity",
    "Reference",
    "ReportFiles",
    "Reportable",
    "RunRecord",
    "Section",
    "SeriesReference",
    "Summary",
    "Table",
    "Threshold",
    "Verdict",
    "against_reference",
    "at_step",
    "build_document",
    "build_report",
    "compare_samples",
    "curve_png",
    "describe",
    "every_run",
    "every_run_at_step",
    "experiment_section",
    "final",
    "format_summary",
    "format_value",
    "load_reference",
    "load_results",
    "paired",
    "png_bytes",
    "render_html",
    "render_markdown",
    "steps_table",
    "summarize",
    "verdict_text",
]
