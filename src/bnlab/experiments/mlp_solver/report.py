"""mlp-solver's report: the claims (BN's higher accuracy and lower loss, about 97%) judged
against the seed's own TF1 runs, the metrics, and the per-epoch curves with the reference's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnlab.experiments.mlp_solver.config import EPOCH_TAG
from bnlab.report.claims import Threshold, against_reference, final, paired, paired_runs
from bnlab.report.reference import REFERENCE_FILES, Reference, SeriesReference
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Claim, Curve, Metric, Verdict

__all__ = ["CLAIMS", "CURVES", "METRICS", "NOTES", "REFERENCE_FILE"]


def _paired_check(key: str, better: str) -> Callable[[ExperimentResults], Verdict]:
    """Per seed (same initial batches), bn's ``key`` is higher (``better="higher"``) or lower."""

    def check(results: ExperimentResults) -> Verdict:
        pairs = [
            (bn.seed, bn.metric(key), plain.metric(key))
            for bn, plain in paired_runs(results, "bn", "no-bn")
        ]
        pairs_ok = [(s, a, b) for s, a, b in pairs if a is not None and b is not None]
        if not pairs_ok:
            return Verdict("no seed with both bn and no-bn finished", None)
        pct = key.endswith("accuracy")
        shown = ", ".join(
            f"seed {s}: {100 * a:.2f}% vs {100 * b:.2f}%"
            if pct
            else f"seed {s}: {a:.4f} vs {b:.4f}"
            for s, a, b in pairs_ok
        )
        holds = all((a > b) if better == "higher" else (a < b) for _, a, b in pairs_ok)
        return Verdict(f"bn vs no-bn, {shown}", holds)

    return check


#: The seed's own TF1 code over several random seeds (shipped in
#: ``bnlab/report/reference_runs``, measured by ``scripts/reference/measure.sh 002``).
REFERENCE_FILE = REFERENCE_FILES["002"]
_STEPS_PER_EPOCH = 55_000 // 32  # the seed's N // batch_size (1,718)


def _reference_epochs(key: str, column: int) -> Callable[[dict[str, Any]], dict[int, float]]:
    """A reference run's per-epoch ``key`` (``valid_accs`` ...; column 0: BN, 1: no BN) by
    bnlab step: after epoch e is step (e + 1) * 1,718."""

    def series(record: dict[str, Any]) -> dict[int, float]:
        return {
            (e + 1) * _STEPS_PER_EPOCH: float(pair[column])
            for e, pair in enumerate(record.get(key, []))
        }

    return series


def _epoch_references(key: str) -> tuple[SeriesReference, ...]:
    return (
        SeriesReference(
            REFERENCE_FILE,
            _reference_epochs(key, 0),
            label="seed's own TF1 code, with BN",
            variant="bn",
        ),
        SeriesReference(
            REFERENCE_FILE,
            _reference_epochs(key, 1),
            label="seed's own TF1 code, without BN",
            variant="no-bn",
        ),
    )


def _difference(a: str, b: str) -> Callable[[dict[str, Any]], float | None]:
    """A reference run's ``a - b`` (e.g. BN's test accuracy minus no-BN's, same run)."""

    def value(record: dict[str, Any]) -> float | None:
        x, y = record.get(a), record.get(b)
        return float(x) - float(y) if isinstance(x, float) and isinstance(y, float) else None

    return value


CLAIMS = (
    Claim(
        "With batch normalization the test accuracy is higher (seed: 0.9713 with BN vs 0.9449 "
        "without).",
        against_reference(
            paired("bn", "no-bn", "test_accuracy", "bn − no-bn: test accuracy (same seed)"),
            Reference(
                REFERENCE_FILE,
                _difference("bn_test_accuracy", "nn_test_accuracy"),
                label="BN − no BN, same run",
            ),
            literal=_paired_check("test_accuracy", "higher"),
        ),
        "bn's test-accuracy lead over no-bn (same seed, same batches) vs the original's "
        "(permutation test, level 0.05); literal: every seed, bn > no-bn",
        short="BN: higher test accuracy than no BN",
    ),
    Claim(
        "With batch normalization the test loss is lower (seed: 0.106 vs 0.237).",
        against_reference(
            paired("bn", "no-bn", "test_loss", "bn − no-bn: test loss (same seed)"),
            Reference(
                REFERENCE_FILE,
                _difference("bn_test_loss", "nn_test_loss"),
                label="BN − no BN, same run",
            ),
            literal=_paired_check("test_loss", "lower"),
            better="lower",
            fmt="float",
        ),
        "bn's test loss minus no-bn's (same seed) vs the original's (permutation test, "
        "level 0.05); literal: every seed, bn < no-bn",
        short="BN: lower test loss than no BN",
    ),
    Claim(
        "The BN network reaches about 97% test accuracy after 10 epochs.",
        against_reference(
            final("bn", "test_accuracy", "bn: test accuracy after 10 epochs"),
            Reference(REFERENCE_FILE, ("bn_test_accuracy",), label="with BN"),
            literal=Threshold(above=0.96),
        ),
        "bn's test accuracy vs the original's (permutation test, level 0.05); literal: > 96%",
        short="BN: about 97% test accuracy after 10 epochs",
    ),
)

#: Final metrics in the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("test_accuracy", "test acc.", "pct"),
    Metric("test_loss", "test loss", "float"),
    Metric("final_train_accuracy", "train acc. (epoch 10)", "pct"),
    Metric("final_validation_accuracy", "validation acc. (epoch 10)", "pct"),
    Metric("train_time_s", "training time", "seconds"),
)


#: Plots drawn from metrics.jsonl.
CURVES: tuple[Curve, ...] = (
    Curve(
        EPOCH_TAG,
        "train_loss",
        "Training Loss at Epoch",
        "loss",
        references=_epoch_references("train_losses"),
    ),
    Curve(
        EPOCH_TAG,
        "train_accuracy",
        "Training Acc at Epoch",
        "accuracy",
        fmt="pct",
        references=_epoch_references("train_accs"),
    ),
    Curve(
        EPOCH_TAG,
        "validation_loss",
        "Validation Loss at Epoch",
        "loss",
        references=_epoch_references("valid_losses"),
    ),
    Curve(
        EPOCH_TAG,
        "validation_accuracy",
        "Validation Acc at Epoch",
        "accuracy",
        fmt="pct",
        references=_epoch_references("valid_accs"),
    ),
)


#: Faithfulness notes: where bnlab departs from the seed, and why.
NOTES: tuple[str, ...] = (
    "TF-faithful presets: glorot-uniform kernels and zero biases (tf.layers.dense keeps "
    "its bias before BN, as the seed's code does), BN epsilon 1e-3 and decay 0.99, Adam "
    "epsilon 1e-8 (TF1); the two networks of a seed see the same batches (TF next_batch "
    "order fixed by the seed). Epoch curves are plotted against optimizer steps "
    "(1,718 per epoch).",
    "bnlab's BatchNorm1d tracks the unbiased batch variance in its running variance; TF's "
    "non-fused tf.layers path on 2-D input tracks the biased one. With batches of 32 the "
    "two differ by a factor 32/31 in the variance used at inference.",
    "As in the seed, the training set is evaluated in inference mode in batches of 32 "
    "and the validation and test sets in one batch; in inference mode the result does "
    "not depend on the chunking.",
)
