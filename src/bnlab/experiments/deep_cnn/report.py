"""deep-cnn's report: the seed's claims judged against its own TF1 runs, the metrics and
curves shown, the seed's printed log, the data-parallel comparison, and the notes.
"""

from __future__ import annotations

from typing import Any

from bnlab.experiments.deep_cnn.config import BN_VARIANTS, PLACEMENT_VARIANTS, VARIANTS
from bnlab.report.claims import (
    Threshold,
    against_reference,
    at_step,
    describe,
    every_run,
    final,
)
from bnlab.report.reference import REFERENCE_FILES, Reference, SeriesReference
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Metric, Verdict
from bnlab.report.tables import band_table, steps_table

__all__ = [
    "CLAIMS",
    "CURVES",
    "DATA_PARALLEL_VARIANTS",
    "METRICS",
    "NOTES",
    "REFERENCE_FILE",
    "data_parallel_blocks",
    "extra_blocks",
    "seed_log",
]


# -- claims -----------------------------------------------------------------------------
def _single_image_check(results: ExperimentResults) -> Verdict:
    """Every BN run: one-at-a-time accuracy on the first test images equals batched accuracy."""
    gaps: list[float] = []
    singles: list[float] = []
    for variant in BN_VARIANTS:
        for run_ in results.complete(variant):
            single = run_.metric("single_image_accuracy")
            batched = run_.metric("batched_first_n_accuracy")
            if single is not None and batched is not None:
                gaps.append(abs(single - batched))
                singles.append(single)
    if not gaps:
        return Verdict("no finished batch-norm run", None)
    measured = (
        f"max |one-at-a-time − batched| = {100 * max(gaps):.0f} points over {len(gaps)} BN runs; "
        + describe("one-at-a-time accuracy", singles, "pct", worst="min")
    )
    return Verdict(measured, max(gaps) <= 0.01)


#: The seed's own TF1 code over several random seeds (``../shared/reference``, shipped in
#: ``bnlab/report/reference_runs``): the tf.layers version and the low-level tf.nn version.
REFERENCE_FILE = REFERENCE_FILES["000"]
_TF_LAYERS = {"version": "layers"}
_TF_NN = {"version": "nn"}


def _reference_validation(record: dict[str, Any]) -> dict[int, float]:
    """A reference run's validation accuracy by bnlab step: after batch i is step i + 1."""
    series = {int(b) + 1: float(v) for b, v in record.get("val", {}).items()}
    if isinstance(record.get("final_val"), int | float):
        series[int(record.get("num_batches", 800))] = float(record["final_val"])
    return series


CLAIMS = (
    Claim(
        "Without batch normalization the 20-layer network does not learn in 800 batches: "
        "test accuracy about 10%, most likely below 15%.",
        every_run(["no-bn"], "test_accuracy", below=0.15),
        "every no-bn seed: test accuracy < 15% (the no-BN network was not run as a reference)",
        short="no BN: about 10% test accuracy (< 15%)",
    ),
    Claim(
        "With batch normalization (tf.layers) the same network trains to over 90% in the "
        "same 800 batches.",
        against_reference(
            final("bn", "test_accuracy", "bn: test accuracy after 800 batches"),
            Reference(REFERENCE_FILE, ("final_test",), _TF_LAYERS, "tf.layers version"),
            literal=Threshold(above=0.90),
        ),
        "bn's test accuracy vs the tf.layers original's (permutation test, level 0.05); "
        "literal: > 90%",
        short="BN (tf.layers): > 90% test accuracy after 800 batches",
    ),
    Claim(
        "With batch normalization, validation accuracy is almost 94% after only 500 batches.",
        against_reference(
            at_step("bn", "validation", "accuracy", 501, "bn: validation accuracy after batch 500"),
            Reference(REFERENCE_FILE, ("val", "500"), _TF_LAYERS, "tf.layers version"),
            literal=Threshold(above=0.91),
        ),
        "bn's validation accuracy after batch 500 vs the tf.layers original's (permutation "
        "test, level 0.05); literal: > 91% ('almost 94%', 3 points slack)",
        short="BN: almost 94% validation accuracy after 500 batches",
    ),
    Claim(
        "Accuracy on the first 100 test images fed one at a time in inference mode matches "
        "batched inference (population statistics are learned and used).",
        against_reference(
            final("bn", "single_image_accuracy", "bn: first 100 test images, one at a time"),
            Reference(REFERENCE_FILE, ("single100",), _TF_LAYERS, "tf.layers version"),
            literal=_single_image_check,
        ),
        "bn's one-at-a-time accuracy on the first 100 vs the tf.layers original's "
        "(permutation test, level 0.05); literal: every BN run (5 variants) "
        "|one-at-a-time − batched| ≤ 1 point on the same images",
        short="one at a time in inference mode = batched",
    ),
    Claim(
        "The low-level tf.nn version (explicit gamma, beta, population mean and variance) "
        "also works.",
        against_reference(
            final("bn-lowlevel", "test_accuracy", "bn-lowlevel: test accuracy after 800 batches"),
            Reference(REFERENCE_FILE, ("final_test",), _TF_NN, "tf.nn version"),
            literal=Threshold(above=0.90),
        ),
        "bn-lowlevel's test accuracy vs the tf.nn original's (permutation test, level 0.05); "
        "literal: > 90%",
        short="the low-level tf.nn version also works (> 90%)",
    ),
    Claim(
        "The alternate placements (bias + BN before ReLU; bias, ReLU, then BN; no bias, ReLU, "
        "then BN) all still train.",
        every_run(list(PLACEMENT_VARIANTS), "test_accuracy", above=0.90),
        "every seed of the three placements: test accuracy > 90% (the placements were not "
        "run as a reference)",
        short="the alternate placements all train (> 90%)",
    ),
)


def seed_log(results: ExperimentResults) -> list[Block]:
    """The seed's printed log as a table: validation accuracy after batch 0, 100, ..., end."""
    runs = [r for v in results.variants for r in results.complete(v)]
    if not runs:
        return []
    config = runs[0].config
    num_batches = int(config.get("num_batches", 800))
    every_ = int(config.get("validate_every", 100))
    batches = list(range(0, num_batches, every_))
    steps = [b + 1 for b in batches] + [num_batches]
    headers = [f"batch {b}" for b in batches] + ["final"]
    table = steps_table(
        results,
        list(VARIANTS),
        "validation",
        "accuracy",
        steps,
        headers,
        caption=f"Validation accuracy after every {every_}th batch and at the end (the seed's "
        "printed log), mean ± sd over seeds",
    )
    return [table] if table.rows else []


#: Run directories of ``bn`` trained by two processes (``torchrun``, docs/distributed.md).
DATA_PARALLEL_VARIANTS = ("bn@2proc-syncbn", "bn@2proc-localbn")


def data_parallel_blocks(results: ExperimentResults) -> list[Block]:
    """Data-parallel ``bn`` runs against the single-process band, when there are any.

    Global batch 64 either way; ``syncbn`` normalizes by the statistics of all 64 images,
    ``localbn`` each process by its own 32.
    """
    present = [v for v in DATA_PARALLEL_VARIANTS if results.complete(v)]
    if not present:
        return []
    table = band_table(
        results,
        "bn",
        present,
        "test_accuracy",
        slack=0.01,
        caption="Test accuracy of bn trained by 2 processes (global batch 64; syncbn: "
        "statistics over all 64 images, localbn: each process over its 32) against the "
        "single-process seeds; the band is their range widened by 1 point",
    )
    return [table] if table.rows else []


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """The seed's printed log, then the data-parallel comparison (if those runs exist)."""
    return seed_log(results) + data_parallel_blocks(results)


#: Final metrics in the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("validation_accuracy", "validation acc.", "pct"),
    Metric("test_accuracy", "test acc.", "pct"),
    Metric("test_loss", "test loss", "float"),
    Metric("single_image_accuracy", "first 100, one at a time", "pct"),
    Metric("batched_first_n_accuracy", "first 100, batched", "pct"),
    Metric("train_time_s", "training time", "seconds"),
)


#: Plots drawn from metrics.jsonl.
CURVES: tuple[Curve, ...] = (
    Curve(
        "validation",
        "accuracy",
        "Validation accuracy (every 100 batches)",
        "accuracy",
        fmt="pct",
        references=(
            SeriesReference(
                REFERENCE_FILE,
                _reference_validation,
                _TF_LAYERS,
                "seed's own TF1 code, tf.layers",
                variant="bn",
            ),
            SeriesReference(
                REFERENCE_FILE,
                _reference_validation,
                _TF_NN,
                "seed's own TF1 code, tf.nn",
                variant="bn-lowlevel",
            ),
        ),
    ),
    Curve(
        "train_batch",
        "accuracy",
        "Training-batch accuracy, inference mode (every 25 batches)",
        "accuracy",
        fmt="pct",
    ),
    Curve(
        "train",
        "loss",
        "Training loss (moving average over 25 steps)",
        "loss",
        smooth=25,
        logy=True,
    ),
    Curve("validation", "loss", "Validation loss", "loss", logy=True),
)


#: Faithfulness notes: where bnlab departs from the seed, and why.
NOTES: tuple[str, ...] = (
    "TF-faithful presets: glorot-uniform kernels and zero biases (tf.layers defaults), "
    "BN epsilon 1e-3 and decay 0.99 (PyTorch momentum 0.01), Adam epsilon 1e-8, TF's "
    "'same' padding (the extra pixel after), NHWC flatten order, denormals flushed to zero.",
    "PyTorch's Adam applies epsilon to the bias-corrected second moment, TF1's to the "
    "uncorrected one; with epsilon 1e-8 the difference is below float32 resolution "
    "after the first steps.",
    "The module-API variants track the unbiased batch variance in the running variance "
    "(as PyTorch and TF's fused kernel do); the low-level variant tracks the biased one, "
    "as the seed's tf.nn.moments code does.",
    "Claims with a reference are judged against the seed's own TF1 code run over "
    "several random seeds (the tf.layers version 10 times, the tf.nn version 5 times), "
    "not against the one run the seed printed; the others on every seed.",
)
