"""cifar-convnet's report: the claims (the seed's parameter counts, its test accuracies),
the metrics and per-epoch curves, the model summaries and example images, and the notes.
"""

from __future__ import annotations

from collections.abc import Callable

from bnlab.experiments.cifar_convnet.config import EPOCH_TAG, EXAMPLES_PNG, SUMMARY_TXT, VARIANTS
from bnlab.experiments.cifar_convnet.model import model_summary, parameter_totals
from bnlab.report.claims import every_run
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Block, Claim, Curve, Figure, Metric, Paragraph, Table, Verdict

__all__ = ["CLAIMS", "CURVES", "METRICS", "NOTES", "SEED_PARAMS", "extra_blocks"]

#: The seed's summary (both models): total, trainable, non-trainable parameters.
SEED_PARAMS = (553_850, 553_626, 224)


def _summary_check(results: ExperimentResults) -> Verdict:
    """Counts from the runs' summaries; without runs, from the model builder (no training)."""
    measured: list[str] = []
    ok = True
    for variant, v in VARIANTS.items():
        runs = results.complete(variant)
        if runs:
            counts = {
                (
                    int(r.metric("total_params") or -1),
                    int(r.metric("trainable_params") or -1),
                    int(r.metric("non_trainable_params") or -1),
                )
                for r in runs
            }
            source = f"{len(runs)} run(s)"
        else:
            counts = {parameter_totals(model_summary(v.config)[0])}
            source = "model builder, no run"
        for total, trainable, frozen in sorted(counts):
            measured.append(
                f"{variant}: {total:,} total, {trainable:,} trainable, {frozen:,} not ({source})"
            )
        ok = ok and counts == {SEED_PARAMS}
    return Verdict("; ".join(measured), ok)


def _accuracy_claim(variant: str, seed_value: float) -> Callable[[ExperimentResults], Verdict]:
    check = every_run([variant], "test_accuracy", above=seed_value - 0.03)

    def run_check(results: ExperimentResults) -> Verdict:
        if not results.complete(variant) and results.not_run is not None:
            return Verdict("not run: CIFAR-10 is not on this machine", None)
        return check(results)

    return run_check


CLAIMS = (
    Claim(
        "Both models have 553,850 parameters, 553,626 trainable and 224 not (BN has 4 per "
        "channel, 2 of them trainable).",
        _summary_check,
        "exactly (553,850, 553,626, 224) for both variants",
        short="553,850 parameters, 553,626 trainable, 224 not",
    ),
    Claim(
        "BN before the activation: test accuracy 0.759 after 10 epochs (train 0.836).",
        _accuracy_claim("bn-before", 0.759),
        "every bn-before seed: test accuracy > 72.9% (seed value - 3 points)",
        short="BN before the activation: 0.759 test accuracy",
    ),
    Claim(
        "BN after the activation: test accuracy 0.758 after 10 epochs (train 0.869).",
        _accuracy_claim("bn-after", 0.758),
        "every bn-after seed: test accuracy > 72.8% (seed value - 3 points)",
        short="BN after the activation: 0.758 test accuracy",
    ),
)


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """The model summaries and the example images of the first finished run of each variant."""
    blocks: list[Block] = []
    for variant in VARIANTS:
        runs = results.complete(variant)
        if not runs:
            continue
        run = runs[0]
        summary = run.path / "artefacts" / SUMMARY_TXT
        if summary.is_file():
            lines = summary.read_text(encoding="utf-8").splitlines()
            blocks.append(
                Table(("model.summary()",), tuple((line,) for line in lines), f"{variant}")
            )
        examples = run.path / "artefacts" / EXAMPLES_PNG
        if examples.is_file() and not any(isinstance(b, Figure) for b in blocks):
            blocks.append(
                Figure(
                    examples.read_bytes(),
                    "The first training images and their classes.",
                    "examples",
                )
            )
    if not blocks:
        blocks.append(Paragraph("No finished run: no summary or example images."))
    return blocks


#: Final metrics in the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("test_accuracy", "test acc.", "pct"),
    Metric("train_accuracy", "train acc. (inference)", "pct"),
    Metric("test_loss", "test loss", "float"),
    Metric("total_params", "parameters", "int"),
    Metric("non_trainable_params", "non-trainable", "int"),
    Metric("train_time_s", "training time", "seconds"),
)


#: Plots drawn from metrics.jsonl.
CURVES: tuple[Curve, ...] = (
    Curve(
        EPOCH_TAG,
        "accuracy",
        "Training accuracy per epoch (Keras 'acc')",
        "accuracy",
        fmt="pct",
    ),
    Curve(
        EPOCH_TAG,
        "val_accuracy",
        "Test accuracy per epoch (Keras 'val_acc')",
        "accuracy",
        fmt="pct",
    ),
    Curve(EPOCH_TAG, "loss", "Training loss per epoch (Keras 'loss')", "loss"),
    Curve(EPOCH_TAG, "val_loss", "Test loss per epoch (Keras 'val_loss')", "loss"),
)


#: Faithfulness notes: where bnlab departs from the seed, and why.
NOTES: tuple[str, ...] = (
    "Keras presets: glorot-uniform kernels, zero biases, BN epsilon 1e-3 and momentum "
    "0.99 (PyTorch momentum 0.01), Adam learning rate 1e-3 and epsilon 1e-7; the dense "
    "layer reads the features in Keras's channels-last order.",
    "Per-epoch training loss and accuracy are averages over the epoch's batches in "
    "training mode (dropout on), as Keras prints them; the final train and test "
    "accuracy are model.evaluate-style, in inference mode, in batches of 250.",
    "Batches follow TF's next_batch order (a fresh shuffle each epoch; 50,000 / 250 = "
    "200 full batches per epoch, so epochs line up with Keras's).",
    "The summary counts BN's moving mean and variance as non-trainable parameters, as "
    "Keras does; bnlab's integer num_batches_tracked counter is not a weight and is not "
    "counted. Output shapes are PyTorch's (N, C, H, W).",
    "CIFAR-10 cannot be downloaded on machines without internet: the experiment then "
    "stops before training with the data layer's message, and the parameter-count claim "
    "is checked on the model builder alone.",
)
