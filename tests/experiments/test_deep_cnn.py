"""The deep-cnn experiment: variants as the seed shows them, its loss, its claims, full size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnlab.experiments import get_experiment
from bnlab.experiments.deep_cnn import SPEC, DeepCNNConfig, build_model, sigmoid_cross_entropy
from bnlab.models import Conv2dSame, LowLevelBatchNorm
from bnlab.report import ExperimentResults, RunRecord, verdict_text


def test_registered_with_the_seed_variants() -> None:
    assert get_experiment("deep-cnn") is SPEC
    assert SPEC.variant_names() == (
        "no-bn",
        "bn",
        "bn-lowlevel",
        "bias-bn-relu",
        "bias-relu-bn",
        "relu-bn",
    )
    base = SPEC.config_for("no-bn", 2)
    assert (base.seed, base.num_batches, base.batch_size, base.learning_rate) == (2, 800, 64, 0.002)
    assert (base.bn_eps, base.bn_decay, base.adam_eps) == (1e-3, 0.99, 1e-8)
    low = SPEC.config_for("bn-lowlevel", 0)
    assert low.lowlevel and low.conv_init == "truncated-normal" and low.conv_init_std == 0.05
    quick = SPEC.config_for("bn", 0, quick=True)
    assert quick.num_batches < 50 and quick.num_conv_layers == 19


@pytest.mark.parametrize("variant", SPEC.variant_names())
def test_each_variant_builds_the_seed_network(variant: str) -> None:
    torch.manual_seed(0)
    config = SPEC.config_for(variant, 0)
    model = build_model(config)
    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    assert len(convs) == 19
    has_bias = variant in ("no-bn", "bias-bn-relu", "bias-relu-bn")
    assert all((c.bias is not None) is has_bias for c in convs)
    lowlevel = [m for m in model.modules() if isinstance(m, LowLevelBatchNorm)]
    assert len(lowlevel) == (20 if variant == "bn-lowlevel" else 0)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_loss_is_the_mean_sigmoid_cross_entropy() -> None:
    logits = torch.randn(4, 10, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 3])
    z = F.one_hot(labels, 10).double()
    # tf.nn.sigmoid_cross_entropy_with_logits: max(x, 0) - x z + log(1 + exp(-|x|)).
    tf = (logits.clamp(min=0) - logits * z + torch.log1p(torch.exp(-logits.abs()))).mean()
    assert torch.allclose(sigmoid_cross_entropy(logits, labels), tf)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_batches"):
        DeepCNNConfig(num_batches=0)
    with pytest.raises(ValueError, match="bn_decay"):
        DeepCNNConfig(bn_decay=1.0)


#: Per-seed offsets of the synthetic runs: three seeds spread like real ones.
_SPREAD = (-0.004, 0.0, 0.004)


def _results(
    metrics: dict[str, dict[str, float]], val_at_501: float = 0.95, seeds: int = 1
) -> ExperimentResults:
    """Synthetic finished runs: ``seeds`` per variant, each value shifted by its offset."""
    results = ExperimentResults("deep-cnn")
    offsets = _SPREAD[:seeds] if seeds > 1 else (0.0,)
    for variant, values in metrics.items():
        runs = []
        for seed, offset in enumerate(offsets):
            shifted = {k: v + offset for k, v in values.items()}
            run = RunRecord(
                Path(variant), "deep-cnn", variant, seed, {}, False, {}, {"metrics": shifted}, None
            )
            run._log = [
                {
                    "phase": "train",
                    "tag": "validation",
                    "step": 501,
                    "accuracy": val_at_501 + offset,
                }
            ]
            runs.append(run)
        results.runs[variant] = runs
    return results


def _good() -> dict[str, dict[str, float]]:
    bn = {"test_accuracy": 0.95, "single_image_accuracy": 0.96, "batched_first_n_accuracy": 0.96}
    return {"no-bn": {"test_accuracy": 0.1135}, **{v: dict(bn) for v in SPEC.variant_names()[1:]}}


def test_claims_hold_on_seed_like_numbers() -> None:
    verdicts = [claim.check(_results(_good(), val_at_501=0.945, seeds=3)) for claim in SPEC.claims]
    consistent = "holds: consistent with the original"
    assert [verdict_text(v) for v in verdicts] == [
        "holds",  # literal (no reference of the no-BN network)
        consistent,
        consistent,
        consistent,
        consistent,
        "holds",  # literal (no reference of the placements)
    ]
    # Judged on the distributions: the test, both sides' n and the literal beside it.
    at_500 = verdicts[2]
    assert at_500.reference.startswith("tf.layers version: 94.58 ± 1.04% [92.06, 96.04]")
    assert "(n=10 runs)" in at_500.reference and "(n=3 seeds)" in at_500.measured
    assert "permutation test p = " in at_500.basis and "n = 3 bnlab seeds vs 10" in at_500.basis
    assert "literal > 91.00%: bnlab 3/3 seeds, original 10/10 runs" in at_500.basis
    assert "tf.nn version" in verdicts[4].reference and "vs 5 original" in verdicts[4].basis
    assert "no reference" in verdicts[0].basis


def test_claims_fail_when_the_numbers_contradict_the_seed() -> None:
    bad = _good()
    bad["no-bn"]["test_accuracy"] = 0.5  # no-BN learned
    bad["relu-bn"]["test_accuracy"] = 0.8  # a placement did not train
    bad["bn"]["single_image_accuracy"] = 0.1  # batch statistics at inference
    bad["bn"]["test_accuracy"] = 0.993  # above every run of the original
    verdicts = [claim.check(_results(bad, val_at_501=0.5, seeds=3)) for claim in SPEC.claims]
    assert [v.holds for v in verdicts] == [False, True, False, False, True, False]
    assert [verdict_text(v) for v in verdicts[1:4]] == [
        "bnlab better than the original",
        "bnlab worse than the original",
        "bnlab worse than the original",
    ]
    assert "relu-bn: 80.00 ± 0.40% (n=3, min 79.60%)" in verdicts[5].measured
    assert "literal criterion does not hold" in verdicts[3].basis
    assert "max |one-at-a-time − batched| = 86 points" in verdicts[3].basis
    assert all(
        v.holds is None for v in (c.check(ExperimentResults("deep-cnn")) for c in SPEC.claims)
    )


def test_one_seed_cannot_decide_against_the_reference() -> None:
    verdicts = [claim.check(_results(_good(), seeds=1)) for claim in SPEC.claims]
    assert verdicts[2].holds is None
    assert verdict_text(verdicts[2]) == "undecided: too few seeds for the test"
    assert "n = 1 bnlab seeds vs 10 original runs" in verdicts[2].basis


def test_seed_log_table_follows_the_seed_schedule() -> None:
    from bnlab.experiments.deep_cnn import seed_log

    results = _results(_good(), val_at_501=0.93)
    for runs in results.runs.values():
        runs[0].config = {"num_batches": 800, "validate_every": 100}
    (table,) = seed_log(results)
    assert table.columns[1:] == (*(f"batch {b}" for b in range(0, 800, 100)), "final")
    assert [row[0] for row in table.rows] == list(SPEC.variant_names())
    assert all(row[6] == "93.00%" and row[1] == "–" for row in table.rows)  # batch 500 only
    assert seed_log(ExperimentResults("deep-cnn")) == []


@pytest.mark.slow
def test_full_size_on_real_mnist(tmp_path: Path) -> None:
    """The seed's sizes on the real MNIST, one seed of no-bn and bn (about 2-4 min)."""
    from bnlab.data import DataError, load_mnist
    from bnlab.experiments import run_experiment

    try:
        load_mnist(progress=False)
    except DataError as exc:
        pytest.skip(f"real MNIST not available: {exc}")
    outcomes = run_experiment(
        SPEC, out_dir=tmp_path, variants=["no-bn", "bn"], seeds=1, progress=False
    )
    metrics = {o.variant: o.metrics for o in outcomes}
    assert metrics["no-bn"]["test_accuracy"] < 0.15
    assert metrics["bn"]["test_accuracy"] > 0.90
    assert (
        abs(metrics["bn"]["single_image_accuracy"] - metrics["bn"]["batched_first_n_accuracy"])
        <= 0.01
    )
    assert dataclasses.asdict(SPEC.config_for("bn", 0))["num_batches"] == 800
