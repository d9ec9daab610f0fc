"""Claims judged against the seeds' own code: shipped references, the test, the verdicts,
the reference column and band in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnlab.report import (
    Curve,
    ExperimentResults,
    Quantity,
    Reference,
    SeriesReference,
    Threshold,
    against_reference,
    build_report,
    compare_samples,
    curve_png,
    load_reference,
    verdict_text,
)
from bnlab.report.reference import REFERENCE_FILES
from bnlab.report.results import load_results
from bnlab.report.stats import format_range, summarize
from bnlab.train import RunDir

EMPTY = ExperimentResults("x")


def test_shipped_references_load_and_match_the_published_summary() -> None:
    for file in REFERENCE_FILES.values():
        records = load_reference(file)
        assert len(records) >= 5, f"{file}: at least 5 runs of the seed's own code"
        assert all(r["impl"] == "tf1" for r in records)
    # The seed-000 figures of ../shared/reference/README.md, recomputed from the data.
    layers = Reference("seed-000-tf1.jsonl", ("val", "500"), {"version": "layers"}).values()
    assert format_range(summarize(layers), "pct") == "94.58 ± 1.04% [92.06, 96.04]"
    test_nn = Reference("seed-000-tf1.jsonl", ("final_test",), {"version": "nn"}).values()
    assert format_range(summarize(test_nn), "pct") == "95.50 ± 2.70% [90.84, 97.63]"
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_reference("seed-999-tf1.jsonl")


def test_reference_selects_by_key_path_filter_and_function() -> None:
    def head_start(record: dict[str, object]) -> float | None:
        val = record["val"]
        assert isinstance(val, dict)
        return float(val["500"]) - float(val["400"])

    ref = Reference("seed-000-tf1.jsonl", head_start, {"version": "nn"})
    assert len(ref.values()) == 5
    assert Reference("seed-000-tf1.jsonl", ("no", "such"), {}).values() == []
    steps, per_run = SeriesReference(
        "seed-000-tf1.jsonl",
        lambda r: {int(b) + 1: v for b, v in r["val"].items()},
        {"version": "layers"},
    ).curves()
    assert steps == [1, 101, 201, 301, 401, 501, 601, 701] and len(per_run) == 10


def test_permutation_test_is_exact_deterministic_and_knows_its_limits() -> None:
    # 3 vs 4 values, completely separated: the most extreme of C(7, 3) = 35 splits, two-sided.
    c = compare_samples([0.1, 0.2, 0.3], [0.7, 0.8, 0.9, 1.0])
    assert c is not None and c.p == pytest.approx(2 / 35) and c.min_p == pytest.approx(2 / 35)
    assert not c.decidable and not c.differ and c.difference == pytest.approx(-0.65)
    big = compare_samples([0.90, 0.91, 0.92, 0.93, 0.94], [0.95, 0.96, 0.97, 0.98, 0.99])
    assert big is not None and big.decidable and big.differ and big.p == pytest.approx(2 / 252)
    same = compare_samples([0.5, 0.6, 0.7], [0.7, 0.5, 0.6, 0.6])
    assert same is not None and same.p > 0.5 and not same.differ
    assert compare_samples([0.9], [0.9, 0.8]) is None
    constant = compare_samples([1.0, 1.0, 1.0], [1.0] * 10)
    assert constant is not None and constant.p == 1.0
    # Monte Carlo beyond 19,999 splits, with a fixed generator: the same p every time.
    xs, ys = [0.01 * i for i in range(12)], [0.01 * i + 0.03 for i in range(12)]
    assert compare_samples(xs, ys) == compare_samples(xs, ys)


@pytest.mark.parametrize(
    ("ours", "better", "text", "holds"),
    [
        ([0.945, 0.94, 0.95], "higher", "holds: consistent with the original", True),
        ([0.985, 0.99, 0.995], "higher", "bnlab better than the original", True),
        ([0.85, 0.84, 0.86], "higher", "bnlab worse than the original", False),
        ([0.985, 0.99, 0.995], "lower", "bnlab worse than the original", False),
        ([0.85, 0.84, 0.86], None, "bnlab differs from the original", False),
        ([0.94], "higher", "undecided: too few seeds for the test", None),
        ([], "higher", "not measured", None),
    ],
)
def test_against_reference_outcomes(
    ours: list[float], better: str | None, text: str, holds: bool | None
) -> None:
    reference = Reference("seed-000-tf1.jsonl", ("val", "500"), {"version": "layers"}, "tf.layers")
    check = against_reference(
        Quantity("bn at 500", lambda _: ours),
        reference,
        literal=Threshold(above=0.91),
        better=better,
    )
    verdict = check(EMPTY)
    assert (verdict_text(verdict), verdict.holds) == (text, holds)
    assert verdict.reference == "tf.layers: 94.58 ± 1.04% [92.06, 96.04] (n=10 runs)"
    passed = sum(v > 0.91 for v in ours)
    assert f"literal > 91.00%: bnlab {passed}/{len(ours)} seeds, original 10/10 runs" in (
        verdict.basis
    )
    if len(ours) >= 2:
        assert f"n = {len(ours)} bnlab seeds vs 10 original runs" in verdict.basis
        assert "permutation test p = " in verdict.basis


def test_against_reference_rejects_a_bad_direction() -> None:
    with pytest.raises(ValueError, match="better"):
        against_reference(
            Quantity("q", lambda _: []),
            Reference("seed-000-tf1.jsonl", ("final_test",)),
            literal=Threshold(above=0.9),
            better="up",
        )
    with pytest.raises(ValueError, match="above"):
        Threshold()


def _write_deep_cnn_run(root: Path, variant: str, seed: int, val500: float, test: float) -> None:
    run = RunDir(root / "deep-cnn" / variant / f"seed-{seed}")
    run.write_json(
        "config.json",
        {"experiment": "deep-cnn", "variant": variant, "seed": seed, "quick": False, "config": {}},
    )
    run.write_json("env.json", {"git": {"revision": "f00d", "dirty": False}})
    run.metrics.extend(
        {"phase": "train", "tag": "validation", "step": step, "accuracy": acc}
        for step, acc in ((1, 0.1), (101, 0.1), (301, 0.7), (501, val500), (800, test))
    )
    run.metrics.flush()
    run.write_result(
        {
            "test_accuracy": test,
            "validation_accuracy": test,
            "single_image_accuracy": 0.96,
            "batched_first_n_accuracy": 0.96,
        },
        wall_time_s=1.0,
    )


def test_report_shows_the_reference_column_verdict_test_and_band(tmp_path: Path) -> None:
    from bnlab.experiments.deep_cnn import SPEC

    runs = tmp_path / "runs"
    for seed, (val500, test) in enumerate([(0.93, 0.95), (0.945, 0.96), (0.955, 0.97)]):
        _write_deep_cnn_run(runs, "bn", seed, val500, test)
    files = build_report(runs, tmp_path / "out", experiments={"deep-cnn": SPEC})
    html = files.html.read_text()
    tables = json.loads(files.json.read_text())["tables"]
    claims = next(t for t in tables if t["section"] == "deep-cnn" and t["caption"] == "Claims")
    assert "the seed's own code (n runs)" in claims["columns"]
    row = next(r for r in claims["rows"] if "after only 500 batches" in r[0])
    cells = dict(zip(claims["columns"], row, strict=True))
    assert cells["the seed's own code (n runs)"] == (
        "tf.layers version: 94.58 ± 1.04% [92.06, 96.04] (n=10 runs)"
    )
    assert cells["bnlab (n seeds)"].endswith("94.33 ± 1.26% [93.00, 95.50] (n=3 seeds)")
    assert cells["verdict"] == "holds: consistent with the original"
    assert "permutation test p = " in cells["what the verdict rests on"]
    assert '<td class="ok">holds: consistent with the original</td>' in html
    overview = next(t for t in tables if t["caption"] == "All claims")
    assert overview["columns"][2] == "the seed's own code (n runs)"
    assert "permutation test" in html and "level 0.05" in html  # the rule is stated
    # The validation plot draws the original's runs beside bnlab's.
    results = load_results(runs)["deep-cnn"]
    curve = next(c for c in SPEC.curves if c.tag == "validation" and c.key == "accuracy")
    with_band = curve_png(results, curve, list(SPEC.variant_names()))
    plain = Curve(curve.tag, curve.key, curve.title, curve.ylabel, fmt=curve.fmt)
    without = curve_png(results, plain, list(SPEC.variant_names()))
    assert with_band is not None and without is not None
    assert (with_band[1], without[1]) == (3, 1)  # bn, plus the tf.layers and tf.nn references
    assert with_band[0] != without[0]


def test_a_missing_reference_file_fails_one_claim_and_one_figure_not_the_report(
    tmp_path: Path,
) -> None:
    from bnlab.report.spec import Claim

    runs = tmp_path / "runs"
    _write_deep_cnn_run(runs, "bn", 0, 0.94, 0.95)
    missing = "seed-404-tf1.jsonl"

    class Spec:
        name, title, seed_file, summary = "deep-cnn", "t", "000.txt", "s"
        notes: tuple[str, ...] = ()
        metrics = ()
        extra_blocks = None
        curves = (
            Curve(
                "validation",
                "accuracy",
                "Validation",
                "accuracy",
                references=(SeriesReference(missing, lambda r: {}),),
            ),
        )
        claims = (
            Claim(
                "c",
                against_reference(
                    Quantity("q", lambda _: [0.9, 0.91]),
                    Reference(missing, ("x",)),
                    literal=Threshold(above=0.5),
                ),
            ),
        )

        def variant_descriptions(self) -> dict[str, str]:
            return {"bn": "with"}

    files = build_report(runs, tmp_path / "out", experiments={"deep-cnn": Spec()})
    text = files.markdown.read_text()
    assert "Figure 'Validation' failed: no shipped reference 'seed-404-tf1.jsonl'" in text
    assert "the check raised FileNotFoundError" in text
