"""sigmoid-mlp's report: the claims (faster, higher, less noisy, the single-example pitfall
and its fix) judged against the seed's own TF1 runs, the metrics and curves shown, the
seed's figures and the notes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure as MplFigure

from bnlab.experiments.sigmoid_mlp.config import TEST_TAG
from bnlab.report.claims import (
    Quantity,
    Threshold,
    against_reference,
    describe,
    final,
    paired_runs,
)
from bnlab.report.plots import PALETTE, png_bytes
from bnlab.report.reference import REFERENCE_FILES, Reference, SeriesReference
from bnlab.report.results import ExperimentResults, RunRecord
from bnlab.report.spec import Block, Claim, Curve, Figure, Metric, Paragraph, Table, Verdict

__all__ = ["CLAIMS", "CURVES", "METRICS", "NOTES", "REFERENCE_FILE", "extra_blocks", "input_noise"]


def _accuracy_series(run: RunRecord) -> dict[int, float]:
    return run.series(TEST_TAG, "accuracy")


def _bn_above_check(results: ExperimentResults) -> Verdict:
    """Per seed: BN accuracy >= no-BN accuracy at >= 95% of the logged steps, and at the end."""
    pairs = paired_runs(results, "bn", "no-bn")
    if not pairs:
        return Verdict("no seed with both bn and no-bn finished", None)
    shares: list[float] = []
    finals: list[tuple[float, float]] = []
    for bn, plain in pairs:
        a, b = _accuracy_series(bn), _accuracy_series(plain)
        steps = sorted(set(a) & set(b))
        if not steps:
            return Verdict("runs without test records", None)
        shares.append(sum(a[s] >= b[s] for s in steps) / len(steps))
        finals.append((a[steps[-1]], b[steps[-1]]))
    holds = all(s >= 0.95 for s in shares) and all(x > y for x, y in finals)
    measured = (
        f"BN at or above no-BN at {100 * min(shares):.1f}% of the logged steps in the worst "
        f"seed (n={len(pairs)}); last logged step: "
        + ", ".join(f"{100 * x:.2f}% vs {100 * y:.2f}%" for x, y in finals)
    )
    return Verdict(measured, holds)


def _first_step_at(series: dict[int, float], level: float) -> int | None:
    return next((s for s in sorted(series) if series[s] >= level), None)


def _faster_check(results: ExperimentResults) -> Verdict:
    """Per seed: BN reaches 90% test accuracy in fewer steps than no-BN (or no-BN never does)."""
    pairs = paired_runs(results, "bn", "no-bn")
    if not pairs:
        return Verdict("no seed with both bn and no-bn finished", None)
    rows = []
    holds = True
    for bn, plain in pairs:
        s_bn = _first_step_at(_accuracy_series(bn), 0.90)
        s_plain = _first_step_at(_accuracy_series(plain), 0.90)
        rows.append(f"seed {bn.seed}: {s_bn} vs {s_plain if s_plain is not None else 'never'}")
        holds = holds and s_bn is not None and (s_plain is None or s_bn < s_plain)
    return Verdict("first step with test accuracy >= 90%, bn vs no-bn: " + "; ".join(rows), holds)


def input_noise(means: Sequence[Sequence[float]]) -> float | None:
    """Noise of mean sigmoid inputs over time: mean ``|m_t - (m_{t-1} + m_{t+1}) / 2|``.

    ``means[i]`` is neuron ``i``'s test-set mean input at successive measurements (every
    50 steps); the second difference ignores a steady drift. Averaged over time and
    neurons; ``None`` with fewer than 3 measurements.

    >>> input_noise([[0.0, 1.0, 0.0, 1.0]])
    1.0
    """
    values = [
        abs(b - (a + c) / 2)
        for series in means
        for a, b, c in zip(series, series[1:], series[2:], strict=False)
    ]
    return math.fsum(values) / len(values) if values else None


def _jitter(run: RunRecord, neurons: int = 5) -> tuple[float, float] | None:
    """Noise of the test-set mean sigmoid input over time (the seed's 5x2 grid), two ways.

    For each probed neuron the mean input ``m_t`` is recorded every 50 steps; its noise
    is the second difference ``|m_t - (m_{t-1} + m_{t+1}) / 2|`` (which ignores a steady
    drift), averaged over time and neurons. Returns ``(absolute, relative)``: in
    sigmoid-input units (the scale on which the sigmoid acts), and divided by the
    distribution's 15-85 percentile spread at that time (scale-free).
    """
    absolute: list[float] = []
    relative: list[float] = []
    for i in range(neurons):
        mean = run.series(TEST_TAG, f"z_mean_{i}")
        p15, p85 = run.series(TEST_TAG, f"z_p15_{i}"), run.series(TEST_TAG, f"z_p85_{i}")
        steps = sorted(mean)
        for a, b, c in zip(steps, steps[1:], steps[2:], strict=False):
            second = abs(mean[b] - (mean[a] + mean[c]) / 2)
            absolute.append(second)
            width = p85.get(b, 0.0) - p15.get(b, 0.0)
            if width > 0:
                relative.append(second / width)
    if not absolute or not relative:
        return None
    return math.fsum(absolute) / len(absolute), math.fsum(relative) / len(relative)


def _stable_inputs_check(results: ExperimentResults) -> Verdict:
    pairs = paired_runs(results, "bn", "no-bn")
    values = [(_jitter(bn), _jitter(plain)) for bn, plain in pairs]
    values_ok = [(a, b) for a, b in values if a is not None and b is not None]
    if not values_ok:
        return Verdict("no seed with both bn and no-bn finished", None)
    measured = (
        "noise of the mean sigmoid input between measurements (mean |second difference|), "
        "bn vs no-bn: "
        + ", ".join(f"{a[0]:.4f} vs {b[0]:.4f}" for a, b in values_ok)
        + "; relative to the 15-85 spread: "
        + ", ".join(f"{a[1]:.4f} vs {b[1]:.4f}" for a, b in values_ok)
        + f" (n={len(values_ok)})"
    )
    return Verdict(measured, all(a[0] < 0.5 * b[0] for a, b in values_ok))


def _constant_prediction_check(results: ExperimentResults) -> Verdict:
    runs = results.complete("bn")
    distinct = [r.metric("single_image_distinct_classes") for r in runs]
    accuracy = [r.metric("single_image_accuracy") for r in runs]
    majority = [r.metric("single_image_majority_class") for r in runs]
    if not runs or any(v is None for v in distinct):
        return Verdict("no finished bn run", None)
    measured = (
        "distinct classes predicted: "
        + ", ".join(f"{v:.0f}" for v in distinct if v is not None)
        + "; constant class: "
        + ", ".join(f"{v:.0f}" for v in majority if v is not None)
        + "; "
        + describe("accuracy", [a for a in accuracy if a is not None], "pct")
    )
    return Verdict(measured, all(v == 1.0 for v in distinct))


#: The seed's own TF1 code over several random seeds (both parts per run; shipped in
#: ``bnlab/report/reference_runs``, measured by ``scripts/reference/measure.sh 001``).
REFERENCE_FILE = REFERENCE_FILES["001"]
_EVERY = 50  # the seed measures the test set when i % 50 == 0, after training batch i


def _reference_series(key: str) -> Callable[[dict[str, Any]], dict[int, float]]:
    """A reference run's accuracy list (``part1_acc`` ...) by bnlab step (after batch i: i+1)."""

    def series(record: dict[str, Any]) -> dict[int, float]:
        return {_EVERY * k + 1: float(v) for k, v in enumerate(record.get(key, []))}

    return series


def _bn_speedup(bn: dict[int, float], plain: dict[int, float]) -> float | None:
    """Steps no-BN needs beyond BN to first reach 90% test accuracy (``None``: one never does)."""
    s_bn, s_plain = _first_step_at(bn, 0.90), _first_step_at(plain, 0.90)
    return None if s_bn is None or s_plain is None else float(s_plain - s_bn)


def _share_at_or_above(bn: dict[int, float], plain: dict[int, float]) -> float | None:
    """Share of the common logged steps where BN's test accuracy is at or above no-BN's."""
    steps = sorted(set(bn) & set(plain))
    return sum(bn[s] >= plain[s] for s in steps) / len(steps) if steps else None


def _noise_ratio(bn: Sequence[Sequence[float]], plain: Sequence[Sequence[float]]) -> float | None:
    """:func:`input_noise` of BN's sigmoid inputs divided by no-BN's."""
    a, b = input_noise(bn), input_noise(plain)
    return None if a is None or not b else a / b


def _run_means(run: RunRecord, neurons: int = 5) -> list[list[float]]:
    out = []
    for i in range(neurons):
        series = run.series(TEST_TAG, f"z_mean_{i}")
        out.append([series[s] for s in sorted(series)])
    return out


def _record_means(record: dict[str, Any], key: str) -> list[list[float]]:
    rows = record.get(key, [])
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def _per_pair(fn: Callable[[RunRecord, RunRecord], float | None], label: str) -> Quantity:
    """A quantity computed per seed from its finished bn and no-bn runs."""

    def values(results: ExperimentResults) -> list[float]:
        out = [fn(bn, plain) for bn, plain in paired_runs(results, "bn", "no-bn")]
        return [v for v in out if v is not None]

    return Quantity(label, values)


CLAIMS = (
    Claim(
        "With batch normalization the network learns faster: it reaches high test accuracy "
        "in fewer steps (Ioffe & Szegedy Fig. 1a).",
        against_reference(
            _per_pair(
                lambda bn, plain: _bn_speedup(_accuracy_series(bn), _accuracy_series(plain)),
                "steps no-bn needs beyond bn to first reach 90% test accuracy",
            ),
            Reference(
                REFERENCE_FILE,
                lambda r: _bn_speedup(
                    _reference_series("part1_acc_BN")(r), _reference_series("part1_acc")(r)
                ),
                label="part 1",
            ),
            literal=_faster_check,
            fmt="int",
        ),
        "bn's head start to 90% test accuracy (steps) vs the original's (permutation test, "
        "level 0.05); literal: every seed, bn reaches 90% at an earlier logged step",
        short="BN learns faster (reaches 90% first)",
    ),
    Claim(
        "With batch normalization the accuracy curve is higher (better accuracy).",
        against_reference(
            _per_pair(
                lambda bn, plain: _share_at_or_above(_accuracy_series(bn), _accuracy_series(plain)),
                "share of logged steps with bn at or above no-bn",
            ),
            Reference(
                REFERENCE_FILE,
                lambda r: _share_at_or_above(
                    _reference_series("part1_acc_BN")(r), _reference_series("part1_acc")(r)
                ),
                label="part 1",
            ),
            literal=_bn_above_check,
        ),
        "share of logged steps where bn is at or above no-bn vs the original's (permutation "
        "test, level 0.05); literal: every seed, bn >= no-bn at >= 95% of the logged steps "
        "and bn > no-bn at the last one",
        short="BN's accuracy curve is higher",
    ),
    Claim(
        "Batch normalization has a visible and significant effect of removing variance/noise "
        "in the inputs to the layer-2 sigmoids (the seed's 5x2 grid; BN2015 Fig. 1(b, c)).",
        against_reference(
            _per_pair(
                lambda bn, plain: _noise_ratio(_run_means(bn), _run_means(plain)),
                "noise of bn's mean sigmoid inputs / no-bn's",
            ),
            Reference(
                REFERENCE_FILE,
                lambda r: _noise_ratio(
                    _record_means(r, "part1_BN2_mean5"), _record_means(r, "part1_z2_mean5")
                ),
                label="part 1, BN2 / z2",
            ),
            literal=_stable_inputs_check,
            better="lower",
            fmt="float",
        ),
        "the ratio of the noise of the mean sigmoid inputs over time (mean |second "
        "difference|, first 5 layer-2 neurons), bn / no-bn, vs the original's (permutation "
        "test, level 0.05); literal: every seed, bn's noise is less than half of no-bn's",
        short="BN removes noise in the sigmoid inputs",
    ),
    Claim(
        "With batch statistics at inference, single examples fed one at a time all get the "
        "same prediction (the seed: always 8, 2% on the first 100 test images).",
        against_reference(
            final("bn", "single_image_distinct_classes", "bn: distinct classes, one at a time"),
            Reference(REFERENCE_FILE, ("part1_single100_distinct",), label="part 1"),
            literal=_constant_prediction_check,
            better=None,
            fmt="int",
        ),
        "distinct classes among bn's 100 single-example predictions vs the original's "
        "(permutation test, level 0.05); literal: every bn seed, exactly one class",
        short="batch statistics, one example at a time: one constant prediction",
    ),
    Claim(
        "With population statistics (EMA, decay 0.999) the rebuilt inference network "
        "classifies single examples: 99% on the first 100 test images in the seed.",
        against_reference(
            final(
                "bn-population", "single_image_accuracy", "bn-population: first 100, one at a time"
            ),
            Reference(REFERENCE_FILE, ("part2_single100",), label="part 2"),
            literal=Threshold(above=0.95),
        ),
        "bn-population's one-at-a-time accuracy on the first 100 vs the original's "
        "(permutation test, level 0.05); literal: > 95%",
        short="population statistics: 99% on the first 100, one at a time",
    ),
    Claim(
        "After 10,000 steps the population-statistics network reaches about 95% test "
        "accuracy (seed: 0.9532).",
        against_reference(
            final(
                "bn-population",
                "inference_test_accuracy",
                "bn-population: test accuracy, rebuilt inference network",
            ),
            Reference(
                REFERENCE_FILE,
                ("part2_inference_test_accuracy",),
                label="part 2, restored inference graph",
            ),
            literal=Threshold(above=0.94),
        ),
        "bn-population's inference-mode test accuracy vs the original's restored inference "
        "graph (permutation test, level 0.05); literal: > 94%",
        short="population statistics: about 95% test accuracy after 10,000 steps",
    ),
)


def _first_run(results: ExperimentResults, variant: str) -> RunRecord | None:
    runs = results.complete(variant)
    return runs[0] if runs else None


def _accuracy_figure(results: ExperimentResults) -> Figure | None:
    """The seed's plot: test accuracy vs step, y from 0.8 to 1, mean over seeds with a band."""
    fig = MplFigure(figsize=(7.5, 4.0))
    ax = fig.add_subplot()
    drawn = 0
    for index, (variant, label) in enumerate((("no-bn", "Without BN"), ("bn", "With BN"))):
        steps, per_run = results.curve(variant, TEST_TAG, "accuracy")
        if not steps:
            continue
        columns = list(zip(*per_run, strict=True))
        x = [s - 1 for s in steps]  # the seed's x axis is the batch index i
        ax.plot(x, [sum(c) / len(c) for c in columns], color=PALETTE[index], label=label)
        if len(per_run) > 1:
            ax.fill_between(
                x,
                [min(c) for c in columns],
                [max(c) for c in columns],
                color=PALETTE[index],
                alpha=0.2,
                linewidth=0,
            )
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("Training steps")
    ax.set_ylabel("Accuracy")
    ax.set_ylim(0.8, 1.0)
    ax.set_title("Batch Normalization Accuracy")
    ax.legend(loc=4)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    n = len(results.complete("bn"))
    return Figure(
        png_bytes(fig),
        f"Test accuracy every 50 steps, with and without BN (y from 0.8 to 1 as in the seed); "
        f"mean over seeds, band min-max (n={n}).",
        "accuracy-seed-axes",
    )


def _inputs_figure(results: ExperimentResults, kind: str) -> Figure | None:
    """The seed's 5x2 grid (``kind="mean"``) or the BN2015 percentiles (``"percentiles"``)."""
    plain, bn = _first_run(results, "no-bn"), _first_run(results, "bn")
    if plain is None or bn is None:
        return None
    neurons = 5
    fig = MplFigure(figsize=(6.5, 12.0))
    axes = fig.subplots(neurons, 2, squeeze=False)
    for i in range(neurons):
        for col, (run, title) in enumerate(((plain, "Without BN"), (bn, "With BN"))):
            ax = axes[i][col]
            ax.set_title(f"{title}, neuron {i}", fontsize=9)
            if kind == "mean":
                series = run.series(TEST_TAG, f"z_mean_{i}")
                ax.plot([s - 1 for s in sorted(series)], [series[s] for s in sorted(series)])
            else:
                for q, style in ((15, ":"), (50, "-"), (85, ":")):
                    series = run.series(TEST_TAG, f"z_p{q}_{i}")
                    steps = sorted(series)
                    ax.plot(
                        [s - 1 for s in steps],
                        [series[s] for s in steps],
                        style,
                        color=PALETTE[col],
                        label=f"p{q}",
                    )
                if i == 0:
                    ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    if kind == "mean":
        caption = (
            "Mean over the test set of the inputs to the first five layer-2 sigmoids, every "
            f"50 steps (the seed's 5x2 grid; seed {bn.seed})."
        )
    else:
        caption = (
            "15th, 50th and 85th percentiles over the test set of the same inputs (BN2015 "
            f"Fig. 1(b, c); seed {bn.seed})."
        )
    return Figure(png_bytes(fig), caption, f"sigmoid-inputs-{kind}")


def _predictions_table(results: ExperimentResults) -> Table | None:
    rows = []
    for variant in ("bn", "bn-population"):
        run = _first_run(results, variant)
        if run is None:
            continue
        path = run.path / "artefacts" / "first_test_predictions.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        preds = data["predictions"]
        rows.append((f"{variant} (seed {run.seed})", data["how"], str(preds[:30])[1:-1] + ", …"))
    if not rows:
        return None
    return Table(
        ("variant", "how", "first predictions"),
        tuple(rows),
        "Single-example predictions (the seed prints them)",
    )


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """The seed's figures: accuracy (y 0.8-1), sigmoid inputs (5x2 grid), percentiles."""
    blocks: list[Block] = []
    for figure in (
        _accuracy_figure(results),
        _inputs_figure(results, "mean"),
        _inputs_figure(results, "percentiles"),
    ):
        if figure is not None:
            blocks.append(figure)
    table = _predictions_table(results)
    if table is not None:
        blocks.append(table)
    if not blocks:
        blocks.append(Paragraph("No finished bn/no-bn pair to plot yet."))
    return blocks


#: Final metrics in the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("test_accuracy", "test acc. (seed's graph)", "pct"),
    Metric("inference_test_accuracy", "test acc., population stats", "pct"),
    Metric("single_image_accuracy", "first 100, one at a time", "pct"),
    Metric("single_image_distinct_classes", "distinct single-example classes", "int"),
    Metric("test_loss", "test loss (mean)", "float"),
    Metric("train_time_s", "training time", "seconds"),
)


#: Plots drawn from metrics.jsonl.
CURVES: tuple[Curve, ...] = (
    Curve(
        TEST_TAG,
        "accuracy",
        "Test accuracy (every 50 steps)",
        "accuracy",
        fmt="pct",
        references=(
            SeriesReference(
                REFERENCE_FILE,
                _reference_series("part1_acc"),
                label="seed's own TF1 code, without BN",
                variant="no-bn",
            ),
            SeriesReference(
                REFERENCE_FILE,
                _reference_series("part1_acc_BN"),
                label="seed's own TF1 code, with BN",
                variant="bn",
            ),
            SeriesReference(
                REFERENCE_FILE,
                _reference_series("part2_acc"),
                label="seed's own TF1 code, batch_norm_wrapper",
                variant="bn-population",
            ),
        ),
    ),
    Curve(
        "train",
        "loss",
        "Training loss, summed over the batch of 60 (moving average over 200 steps)",
        "loss",
        smooth=200,
        logy=True,
    ),
)


#: Faithfulness notes: where bnlab departs from the seed, and why.
NOTES: tuple[str, ...] = (
    "Every variant of a seed starts from the same predetermined N(0, 1) weights "
    "(drawn from the seed alone) and sees the same batches (TF next_batch order fixed "
    "by the seed), as the seed's two networks do.",
    "Accuracy during training is measured as the seed's training graph measures it: "
    "the BN networks normalize the 10,000 test images with their own batch statistics. "
    "'test acc., population stats' is the rebuilt inference network of bn-population.",
    "The seed's part-2 evaluations ran the training graph, so each also moved the "
    "population statistics toward the test set's (about 2% of the final estimate); "
    "bnlab measures without that side effect (eval_updates_population=False).",
    "The population variance tracks the biased batch variance, as the seed's tf.assign "
    "ops do; the rebuilt network has no output bias, as the seed's build_graph (b3 is "
    "declared but never added).",
    "Loss computed with log_softmax instead of log(softmax): same value and gradient "
    "wherever the seed's is finite.",
)
