"""Assemble the report from run directories: overview, one section per experiment, files.

``build_report(runs_dir, experiments=...)`` reads ``runs_dir`` (never retrains), asks each
experiment's spec for its metrics, curves, claims and extra blocks, and writes
``report.html`` (self-contained), ``report.md`` with ``report-figures/*.png`` beside it,
and ``report.json`` (every table as data). All writes are atomic; the output depends on
the run directories only, so a rebuild gives identical tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.report.claims import LITERAL_RULE, REFERENCE_RULE
from bnlab.report.plots import curve_png
from bnlab.report.render import (
    VERDICT_TEXT,
    Document,
    Section,
    figures,
    render_html,
    render_markdown,
    slug,
)
from bnlab.report.results import ExperimentResults, load_results
from bnlab.report.spec import Block, Figure, Metric, Paragraph, Reportable, Table, Verdict
from bnlab.report.stats import format_summary, format_value, summarize
from bnlab.train.io import to_json, write_bytes_atomic, write_text_atomic

__all__ = [
    "CLAIM_COLUMNS",
    "NO_REFERENCE",
    "ClaimRow",
    "ReportFiles",
    "build_document",
    "build_report",
    "experiment_section",
    "metric_table",
    "verdict_text",
]


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`build_report` wrote."""

    html: Path
    markdown: Path
    json: Path
    figures: tuple[Path, ...]


def _ordered_variants(spec: Reportable | None, results: ExperimentResults) -> list[str]:
    declared = list(spec.variant_descriptions()) if spec is not None else []
    return declared + [v for v in results.variants if v not in declared]


def _run_table(results: ExperimentResults, runs_dir: Path) -> Table:
    rows = []
    for run in results.all_runs():
        wall = run.result.get("wall_time_s") if run.result else None
        git = run.env.get("git", {}) if isinstance(run.env.get("git"), dict) else {}
        revision = str(git.get("revision") or "–")[:10] + ("+dirty" if git.get("dirty") else "")
        note = ""
        if run.failure is not None:
            note = f"{run.failure.get('error', 'error')}: {run.failure.get('message', '')}"
        try:
            where = str(run.path.relative_to(runs_dir))
        except ValueError:
            where = str(run.path)
        if run.problem is not None:
            note = f"corrupt: {run.problem}"
        rows.append(
            (
                where,
                run.status,
                run.data_label,
                "yes" if run.quick else "no",
                format_value(wall, "seconds") if isinstance(wall, int | float) else "–",
                revision,
                note[:300],
            )
        )
    return Table(
        ("run directory", "status", "data", "quick", "wall time", "git revision", "note"),
        tuple(rows),
        "Runs",
    )


def metric_table(
    spec: Reportable | None, results: ExperimentResults, variants: Sequence[str]
) -> Table | None:
    """The final-metrics table: one row per variant with runs, ``mean ± sd`` per metric.

    Without a spec (or with no declared metrics) every key found in ``result.json`` is shown.
    """
    if spec is not None and spec.metrics:
        metrics = list(spec.metrics)
    else:
        keys = sorted(
            {k for run in results.all_runs() if run.result for k in run.result.get("metrics", {})}
        )
        metrics = [Metric(k, k) for k in keys]
    if not metrics:
        return None
    rows = []
    for variant in variants:
        done = results.complete(variant)
        total = len(results.runs.get(variant, []))
        if total == 0:
            continue
        cells = [variant, f"{len(done)}/{total}"]
        for metric in metrics:
            values = results.values(variant, metric.key)
            text = format_summary(summarize(values), metric.fmt)
            if any(not math.isfinite(v) for v in values):
                text += " (non-finite in some runs)"
            cells.append(text)
        rows.append(tuple(cells))
    if not rows:
        return None
    return Table(
        ("variant", "seeds done", *(m.label for m in metrics)),
        tuple(rows),
        "Final metrics (mean ± sd over seeds)",
    )


def _holds(text: str) -> bool:
    """Whether a verdict text counts as holding (consistent with or better than the original)."""
    return text == VERDICT_TEXT[True] or text.startswith(("holds", "bnlab better"))


def _check(claim_check: Any, results: ExperimentResults) -> Verdict:
    try:
        verdict = claim_check(results)
    except Exception as exc:  # a broken check must not hide the rest of the report
        return Verdict(f"the check raised {type(exc).__name__}: {exc}", None)
    if not isinstance(verdict, Verdict):
        return Verdict(f"the check returned {type(verdict).__name__}, not a Verdict", None)
    return verdict


#: Shown in the reference column of a claim that has no run of the seed's own code.
NO_REFERENCE = "– (not measured: literal threshold)"

#: The columns of an experiment's claims table.
CLAIM_COLUMNS = (
    "seed claim",
    "criterion",
    "the seed's own code (n runs)",
    "bnlab (n seeds)",
    "verdict",
    "what the verdict rests on",
)


@dataclass(frozen=True)
class ClaimRow:
    """One claim in the overview: experiment, claim (short), reference, bnlab, verdict."""

    experiment: str
    claim: str
    reference: str
    measured: str
    verdict: str


def verdict_text(verdict: Verdict) -> str:
    """The verdict in words: its ``outcome`` if it has one, else holds / does not hold."""
    return verdict.outcome or VERDICT_TEXT[verdict.holds]


def experiment_section(
    name: str,
    spec: Reportable | None,
    results: ExperimentResults | None,
    runs_dir: Path,
) -> tuple[Section, list[ClaimRow]]:
    """Build the section of one experiment; also return its claims rows for the overview."""
    title = f"{name}: {spec.title}" if spec is not None else name
    section = Section(title, anchor=slug(name))
    blocks: list[Block] = section.blocks
    results = results if results is not None else ExperimentResults(name)
    if spec is not None:
        blocks.append(Paragraph(f"{spec.summary} (Seed file: {spec.seed_file}.)"))
    else:
        blocks.append(
            Paragraph("This experiment is not registered in this bnlab; generic tables only.")
        )
    if results.not_run is not None:
        reason = results.not_run.get("reason", "unknown reason")
        blocks.append(Paragraph(f"NOT RUN. {reason}"))
    if not results.runs and results.not_run is None:
        blocks.append(Paragraph(f"No runs found. Run it with: bnlab run {name} --out {runs_dir}"))
    if any(run.quick for run in results.all_runs()):
        blocks.append(
            Paragraph(
                "These are --quick runs (tiny step counts, checking the code paths): their "
                "numbers are not comparable with the seed's, and claims are not expected to hold."
            )
        )
    data_note = results.data_note()
    if data_note is not None:
        blocks.append(Paragraph(data_note))
    variants = _ordered_variants(spec, results)

    claim_rows: list[ClaimRow] = []
    if spec is not None and spec.claims:
        rows = []
        for claim in spec.claims:
            verdict = _check(claim.check, results)
            text = verdict_text(verdict)
            reference = verdict.reference or NO_REFERENCE
            rows.append(
                (claim.text, claim.criterion, reference, verdict.measured, text, verdict.basis)
            )
            claim_rows.append(
                ClaimRow(name, claim.short or claim.text, reference, verdict.measured, text)
            )
        blocks.append(Table(CLAIM_COLUMNS, tuple(rows), "Claims"))

    if spec is not None:
        descriptions = spec.variant_descriptions()
        blocks.append(
            Table(
                ("variant", "what it is", "runs finished"),
                tuple(
                    (
                        v,
                        descriptions.get(v, ""),
                        f"{len(results.complete(v))}/{len(results.runs.get(v, []))}",
                    )
                    for v in variants
                ),
                "Variants",
            )
        )
    metric_table_ = metric_table(spec, results, variants)
    if metric_table_ is not None:
        blocks.append(metric_table_)

    if spec is not None:
        for curve in spec.curves:
            try:
                drawn = curve_png(results, curve, variants)
            except (OSError, ValueError) as exc:  # e.g. a reference file missing: keep the rest
                blocks.append(Paragraph(f"Figure '{curve.title}' failed: {exc}"))
                continue
            if drawn is not None:
                png, _ = drawn
                caption = f"{curve.title}: mean over seeds, band from min to max over seeds."
                if curve.references:
                    caption += (
                        " Dashed, with a hatched min-max band: the seed's own TF1 code over "
                        "its reference runs."
                    )
                blocks.append(Figure(png, caption, slug(f"{curve.tag}-{curve.key}-{curve.title}")))
        if spec.extra_blocks is not None and results.runs:
            try:
                blocks.extend(spec.extra_blocks(results))
            except Exception as exc:  # keep the rest of the report
                blocks.append(Paragraph(f"Extra content failed: {type(exc).__name__}: {exc}"))
        for note in spec.notes:
            blocks.append(Paragraph(f"Note: {note}"))
    if results.runs:
        blocks.append(_run_table(results, runs_dir))
    return section, claim_rows


def _environment_section(all_results: Mapping[str, ExperimentResults]) -> Section | None:
    seen: dict[tuple[str, ...], int] = {}
    for results in all_results.values():
        for run in results.all_runs():
            env = run.env
            if not env:
                continue
            git = env.get("git") if isinstance(env.get("git"), dict) else {}
            key = (
                str(env.get("bnlab", "?")),
                str(env.get("torch", "?")),
                str(env.get("python", "?")),
                str(run.torch_threads),
                str(env.get("cpu_count", "?")),
                str(env.get("platform", "?")),
                str((git or {}).get("revision") or "–")[:10],
            )
            seen[key] = seen.get(key, 0) + 1
    if not seen:
        return None
    rows = tuple((*key, str(count)) for key, count in sorted(seen.items()))
    columns = ("bnlab", "torch", "python", "torch threads", "CPUs", "platform", "git", "runs")
    caption = "Where the runs ran (env.json; torch threads: what each run trained on, result.json)"
    return Section("Environment", [Table(columns, rows, caption)])


def build_document(
    runs_dir: str | Path,
    experiments: Mapping[str, Reportable],
    *,
    title: str = "bnlab report: batch normalization, reproduced",
) -> Document:
    """Read ``runs_dir`` and return the report :class:`Document` (nothing is written).

    Registered experiments without runs get a "not run" section; experiments found on disk
    but not registered get generic tables.
    """
    root = Path(runs_dir)
    all_results = load_results(root, experiments)
    names = list(experiments) + [n for n in all_results if n not in experiments]
    sections: list[Section] = []
    claim_rows: list[ClaimRow] = []
    status_rows = []
    for name in names:
        results = all_results.get(name)
        section, claims = experiment_section(name, experiments.get(name), results, root)
        sections.append(section)
        claim_rows += claims
        runs = results.all_runs() if results is not None else []
        done = sum(run.status == "complete" for run in runs)
        if results is not None and results.not_run is not None and not runs:
            status = "not run: " + str(results.not_run.get("reason", ""))[:160]
        elif not runs:
            status = "no runs"
        else:
            failed = sum(run.status == "failed" for run in runs)
            corrupt = sum(run.status == "corrupt" for run in runs)
            status = f"{done}/{len(runs)} runs finished" + (f", {failed} failed" if failed else "")
            status += f", {corrupt} corrupt" if corrupt else ""
        held = sum(_holds(row.verdict) for row in claims)
        status_rows.append((name, status, f"{held}/{len(claims)}" if claims else "–"))

    intro: list[Block] = []
    total_runs = sum(len(r.all_runs()) for r in all_results.values())
    intro.append(
        Paragraph(
            f"Built from the run directories in {root} ({total_runs} runs) without retraining. "
            "Tables show mean ± sample standard deviation over seeds; plots show the mean "
            "with a band from the minimum to the maximum over seeds."
        )
    )
    intro.append(
        Table(("experiment", "status", "claims holding"), tuple(status_rows), "Experiments")
    )
    if claim_rows:
        intro.append(Paragraph(f"How claims are judged. {REFERENCE_RULE} {LITERAL_RULE}"))
        intro.append(
            Table(
                (
                    "experiment",
                    "seed claim",
                    "the seed's own code (n runs)",
                    "bnlab (n seeds)",
                    "verdict",
                ),
                tuple(
                    (r.experiment, r.claim, r.reference, r.measured, r.verdict) for r in claim_rows
                ),
                "All claims",
            )
        )
    env = _environment_section(all_results)
    if env is not None:
        sections.append(env)
    sections.append(
        Section(
            "Reproduce",
            [
                Paragraph(
                    "Every number here comes from the run directories. To re-run: "
                    "`bnlab reproduce --seeds K --out DIR` (all experiments, then this report), "
                    "`bnlab run EXPERIMENT --variant V --seeds K --out DIR` (one experiment), "
                    f"`bnlab report {root}` (rebuild this report from the runs). Each run's "
                    "config.json holds its resolved configuration."
                )
            ],
        )
    )
    return Document(title, intro, sections)


def printable(text: str) -> str:
    """``text`` as valid UTF-8 text: a byte a path held that is not UTF-8 (which Python
    keeps as a lone surrogate, e.g. ``--out $'runs-\\xff'``) becomes U+FFFD.

    >>> printable("runs-\\udcff/deep-cnn")
    'runs-\ufffd/deep-cnn'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _printable_data(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable_data(v) for v in value]
    return value


def build_report(
    runs_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    experiments: Mapping[str, Reportable] | None = None,
) -> ReportFiles:
    """Build the report of ``runs_dir`` and write it into ``out_dir`` (default ``runs_dir``).

    Writes ``report.html``, ``report.md``, ``report.json`` and ``report-figures/*.png``.

    Raises:
        FileNotFoundError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else root
    doc = build_document(root, experiments or {})
    figure_dir = out / "report-figures"
    links: dict[int, str] = {}
    written: list[Path] = []
    for section in doc.sections:
        for figure in figures(section.blocks):
            path = figure_dir / f"{section.anchor}-{figure.name}.png"
            write_bytes_atomic(path, figure.png)
            links[id(figure)] = f"report-figures/{path.name}"
            written.append(path)
    html_path, md_path, json_path = out / "report.html", out / "report.md", out / "report.json"
    write_text_atomic(html_path, printable(render_html(doc)))
    write_text_atomic(md_path, printable(render_markdown(doc, links)))
    tables = [_printable_data(table) for table in doc.tables()]
    write_text_atomic(json_path, to_json({"title": doc.title, "tables": tables}))
    return ReportFiles(html_path, md_path, json_path, tuple(written))
