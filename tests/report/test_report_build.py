"""The report: statistics, claims, curves and the HTML/Markdown files, from synthetic run dirs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bnlab.report import (
    Claim,
    Curve,
    ExperimentResults,
    Metric,
    Paragraph,
    Table,
    Verdict,
    build_report,
    every_run,
    every_run_at_step,
    format_summary,
    load_results,
    summarize,
)
from bnlab.report.render import Document, Section, render_html, render_markdown
from bnlab.report.spec import Block
from bnlab.report.tables import band_table
from bnlab.train import RunDir


def _write_run(
    root: Path, variant: str, seed: int, acc: float | None, curve: Sequence[float]
) -> RunDir:
    run = RunDir(root / "toy" / variant / f"seed-{seed}")
    run.write_json(
        "config.json",
        {
            "experiment": "toy",
            "variant": variant,
            "seed": seed,
            "quick": False,
            "config": {"seed": seed},
        },
    )
    run.write_json(
        "env.json",
        {
            "torch": "2.x",
            "bnlab": "0.1.0",
            "torch_threads": 2,
            "git": {"revision": "abc", "dirty": False},
        },
    )
    run.metrics.extend(
        {"phase": "train", "tag": "validation", "step": 10 * i + 1, "accuracy": a}
        for i, a in enumerate(curve)
    )
    run.metrics.flush()
    if acc is not None:
        run.write_result({"test_accuracy": acc}, wall_time_s=3.0)
    return run


@dataclass(frozen=True)
class ToySpec:
    """A hand-written Reportable (the report must not need the experiments layer)."""

    name: str = "toy"
    title: str = "a toy experiment"
    seed_file: str = "toy.txt"
    summary: str = "Two variants <b>and</b> a claim."
    notes: Sequence[str] = ("faithful enough",)
    metrics: Sequence[Metric] = (Metric("test_accuracy", "test acc.", "pct"),)
    curves: Sequence[Curve] = (
        Curve("validation", "accuracy", "Validation accuracy", "accuracy", fmt="pct"),
    )
    claims: Sequence[Claim] = field(
        default_factory=lambda: (
            Claim(
                "BN is above 90%", every_run(["bn"], "test_accuracy", above=0.9), "every seed > 90%"
            ),
            Claim(
                "no BN is below 15%",
                every_run(["no-bn"], "test_accuracy", below=0.15),
                "every seed < 15%",
            ),
            Claim(
                "BN at step 21 above 50%",
                every_run_at_step(["bn"], "validation", "accuracy", 21, above=0.5),
            ),
            Claim("missing variant", every_run(["ghost"], "test_accuracy", above=0.5)),
        )
    )
    extra_blocks: None = None

    def variant_descriptions(self) -> Mapping[str, str]:
        return {"no-bn": "without", "bn": "with"}


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_run(root, "bn", 0, 0.95, [0.1, 0.6, 0.9])
    _write_run(root, "bn", 1, 0.93, [0.1, 0.7, 0.92])
    _write_run(root, "bn", 2, None, [0.1])  # interrupted: no result.json
    _write_run(root, "no-bn", 0, 0.11, [0.1, 0.1, 0.11])
    failed = _write_run(root, "no-bn", 1, None, [0.1])
    failed.write_json(
        "failed.json", {"error": "NonFiniteLossError", "message": "loss became nan at step 3"}
    )
    RunDir(root / "cifar" / "x").path.mkdir(parents=True)
    (root / "cifar" / "not-run.json").write_text(
        json.dumps({"reason": "CIFAR-10 not found; pass --data-dir"})
    )
    return root


def test_summaries_and_formats() -> None:
    s = summarize([0.9, 0.92, 0.94, float("nan")])
    assert (
        s is not None and s.n == 3 and s.mean == pytest.approx(0.92) and s.sd == pytest.approx(0.02)
    )
    assert format_summary(s, "pct") == "92.00 ± 2.00%"
    assert format_summary(summarize([12.34]), "seconds") == "12.3 s"
    assert summarize([]) is None and format_summary(None) == "–"


def test_loading_groups_runs_and_states(runs: Path) -> None:
    results = load_results(runs)
    assert set(results) == {"toy", "cifar"}
    toy = results["toy"]
    assert [r.status for r in toy.runs["bn"]] == ["complete", "complete", "incomplete"]
    assert [r.status for r in toy.runs["no-bn"]] == ["complete", "failed"]
    assert toy.values("bn", "test_accuracy") == [0.95, 0.93]
    steps, per_run = toy.curve("bn", "validation", "accuracy")
    assert steps == [1, 11, 21] and per_run == [[0.1, 0.6, 0.9], [0.1, 0.7, 0.92]]
    steps, per_run = toy.curve("bn", "validation", "accuracy", smooth=2)
    assert steps == [11, 21] and per_run[0] == pytest.approx([0.35, 0.75])
    assert results["cifar"].not_run == {"reason": "CIFAR-10 not found; pass --data-dir"}


def test_claim_checks_hold_fail_and_abstain(runs: Path) -> None:
    toy = load_results(runs)["toy"]
    spec = ToySpec()
    verdicts = [c.check(toy) for c in spec.claims]
    assert [v.holds for v in verdicts] == [True, True, True, None]
    assert verdicts[0].measured == "bn: 94.00 ± 1.41% (n=2, min 93.00%)"
    assert verdicts[2].measured.startswith("at step 21: bn:")
    stricter = every_run(["bn"], "test_accuracy", above=0.94)(toy)
    assert (stricter.measured, stricter.holds) == (verdicts[0].measured, False)
    assert stricter.basis.endswith("1/2 seeds pass") and "no reference" in stricter.basis
    with pytest.raises(ValueError, match="threshold"):
        every_run(["bn"], "test_accuracy")(toy)


def test_report_files_and_rebuild(runs: Path, tmp_path: Path) -> None:
    files = build_report(runs, tmp_path / "out", experiments={"toy": ToySpec()})
    html = files.html.read_text()
    md = files.markdown.read_text()
    tables = json.loads(files.json.read_text())["tables"]
    # Escaped user text, embedded figure, verdict colours, the not-run reason, failures.
    assert "Two variants &lt;b&gt;and&lt;/b&gt;" in html
    assert html.count("data:image/png;base64,") == 1
    assert '<td class="ok">holds</td>' in html and '<td class="na">not measured</td>' in html
    assert "NOT RUN. CIFAR-10 not found; pass --data-dir" in md
    assert "loss became nan at step 3" in md
    assert "![Validation accuracy" in md and len(files.figures) == 1 and files.figures[0].is_file()
    overview = next(t for t in tables if t["caption"] == "Experiments")
    assert overview["rows"] == [
        ["toy", "3/5 runs finished, 1 failed", "3/4"],
        ["cifar", "not run: CIFAR-10 not found; pass --data-dir", "–"],
    ]
    final = next(t for t in tables if t["caption"].startswith("Final metrics"))
    assert final["rows"] == [["no-bn", "1/2", "11.00%"], ["bn", "2/3", "94.00 ± 1.41%"]]
    # Rebuilding gives byte-identical output (figures included).
    again = build_report(runs, tmp_path / "out2", experiments={"toy": ToySpec()})
    assert again.json.read_bytes() == files.json.read_bytes()
    assert again.markdown.read_bytes() == files.markdown.read_bytes()
    assert again.html.read_bytes() == files.html.read_bytes()


def test_broken_claim_check_does_not_break_the_report(runs: Path, tmp_path: Path) -> None:
    def boom(results: ExperimentResults) -> Verdict:
        raise KeyError("missing metric")

    spec = ToySpec(claims=(Claim("fragile", boom),))
    files = build_report(runs, tmp_path / "out", experiments={"toy": spec})
    assert "the check raised KeyError" in files.markdown.read_text()


def test_unregistered_experiment_gets_generic_tables(runs: Path, tmp_path: Path) -> None:
    files = build_report(runs, tmp_path / "out", experiments={})
    tables = json.loads(files.json.read_text())["tables"]
    final = next(t for t in tables if t["section"] == "toy" and t["caption"].startswith("Final"))
    assert final["columns"] == ["variant", "seeds done", "test_accuracy"]


def test_renderers_cover_every_block() -> None:
    blocks: list[Block] = [
        Paragraph("a | b"),
        Table(("x", "verdict"), (("1", "does not hold"),), "T"),
        Table(("claim", "y"), (("holds up", "does not hold"),), "not a verdict column"),
    ]
    doc = Document("Title", blocks, [Section("S one", list(blocks))])
    html = render_html(doc)
    assert '<td class="bad">does not hold</td>' in html and 'href="#s-one"' in html
    # Only a column named "verdict" is coloured.
    assert "<td>holds up</td><td>does not hold</td>" in html
    md = render_markdown(doc)
    assert "| 1 | does not hold |" in md and "a | b" in md
    with pytest.raises(ValueError, match="2 cells"):
        Table(("x", "y"), (("1",),))
    assert math.isnan(summarize([float("nan"), 1.0]).sd) is False  # type: ignore[union-attr]


def test_band_table_compares_variants_with_the_reference_range(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, acc in enumerate([0.96, 0.97, 0.98]):
        _write_run(root, "bn", seed, acc, [acc])
    for seed, acc in enumerate([0.955, 0.975]):  # inside [0.95, 0.99]
        _write_run(root, "bn@2proc-syncbn", seed, acc, [acc])
    for seed, acc in enumerate([0.97, 0.93]):  # one seed below the band
        _write_run(root, "bn@2proc-localbn", seed, acc, [acc])
    results = load_results(root)["toy"]
    variants = ["bn@2proc-syncbn", "bn@2proc-localbn", "bn@3proc-syncbn"]
    table = band_table(results, "bn", variants, "test_accuracy", slack=0.01)
    assert [row[0] for row in table.rows] == ["bn", "bn@2proc-syncbn", "bn@2proc-localbn"]
    assert [row[4] for row in table.rows] == ["", "yes", "no"]
    assert table.rows[2][3] == "−2.00%"  # 95.00% vs 97.00%
    assert "band = [95.00%, 99.00%]" in table.caption
