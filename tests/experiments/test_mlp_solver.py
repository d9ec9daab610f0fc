"""The mlp-solver experiment (seed 002): the Model builder, the Solver, per-epoch records,
both networks on the same batches, end to end on small MNIST-format data, its claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.data import load_mnist, write_fake_mnist
from bnlab.experiments import get_experiment, run_experiment
from bnlab.experiments.mlp_solver import REFERENCE_FILE, SPEC, MLPSolverConfig, Model, Solver
from bnlab.models.mlp import build_mlp
from bnlab.norm import BatchNorm1d
from bnlab.report import ExperimentResults, RunRecord, load_reference, verdict_text
from bnlab.train import read_metrics


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(
        tmp_path_factory.mktemp("mnist"), n_train=600, n_test=100, seed=5, noise=150.0
    )


def test_registered_with_the_seed_settings() -> None:
    assert get_experiment("mlp-solver") is SPEC
    assert SPEC.variant_names() == ("bn", "no-bn")
    bn, plain = SPEC.config_for("bn", 0), SPEC.config_for("no-bn", 0)
    assert bn.use_batchnorm and not plain.use_batchnorm
    assert (bn.learning_rate, bn.batch_size, bn.epochs, bn.hidden_dims) == (0.01, 32, 10, (32, 32))
    assert (bn.bn_eps, bn.bn_decay, bn.adam_eps) == (1e-3, 0.99, 1e-8)
    with pytest.raises(ValueError, match="epochs"):
        MLPSolverConfig(epochs=0)


def test_model_builder_is_the_seeds_network() -> None:
    torch.manual_seed(0)
    net = build_mlp(use_batchnorm=True)
    layer0 = net.layer0
    assert isinstance(layer0.dense, nn.Linear) and layer0.dense.bias is not None  # kept
    assert layer0.dense.bias.eq(0).all()  # tf.layers.dense: zero bias
    assert isinstance(layer0.norm, BatchNorm1d)
    assert (layer0.norm.eps, round(layer0.norm.momentum, 6)) == (1e-3, 0.01)
    limit = (6 / (784 + 32)) ** 0.5  # glorot-uniform
    assert 0.95 * limit < float(layer0.dense.weight.detach().abs().max()) <= limit
    assert (
        sum(p.numel() for p in net.parameters())
        == 784 * 32 + 32 + 2 * 32 + 32 * 32 + 32 + 2 * 32 + 330
    )
    plain = build_mlp(use_batchnorm=False)
    assert not any(isinstance(m, BatchNorm1d) for m in plain.modules())


def test_solver_trains_and_evaluates_in_batches_like_the_seed() -> None:
    torch.manual_seed(0)
    solver = Solver(Model("batchnorm", 784, 10))
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    losses = [solver.train(x[:32], y[:32]) for _ in range(20)]
    assert losses[-1] < losses[0]
    norm = solver.model.net.layer0.norm
    assert int(norm.num_batches_tracked) == 20  # population statistics move while training
    whole = solver.evaluate(x, y)
    chunked = solver.evaluate(x, y, batch_size=10)  # the seed's weighted chunk average
    assert whole == pytest.approx(chunked, rel=1e-5)
    assert int(norm.num_batches_tracked) == 20  # evaluation does not


def test_both_nets_train_on_the_same_batches_with_epoch_records(
    mnist: Path, tmp_path: Path
) -> None:
    out = run_experiment(SPEC, out_dir=tmp_path, seeds=1, quick=True, data_dir=mnist)
    assert [o.status for o in out] == ["done", "done"]
    data = load_mnist(mnist, progress=False)
    per_epoch = len(data.train) // 32
    logs = {
        v: read_metrics(tmp_path / "mlp-solver" / v / "seed-0" / "metrics.jsonl")
        for v in SPEC.variant_names()
    }
    for records in logs.values():
        epochs = [r for r in records if r["tag"] == "epoch"]
        assert [r["step"] for r in epochs] == [per_epoch, 2 * per_epoch]
        assert {"train_loss", "train_accuracy", "validation_loss", "validation_accuracy"} <= set(
            epochs[0]
        )
    metrics = {o.variant: o.metrics for o in out}
    for m in metrics.values():
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["steps_per_epoch"] == per_epoch
    checkpoint = torch.load(
        tmp_path / "mlp-solver/bn/seed-0/checkpoints/train.pt", weights_only=True
    )
    other = torch.load(tmp_path / "mlp-solver/no-bn/seed-0/checkpoints/train.pt", weights_only=True)
    assert checkpoint["sampler"] == other["sampler"]  # same batch stream position and seed


def _results(pairs: list[tuple[tuple[float, float], tuple[float, float]]]) -> ExperimentResults:
    """One seed per ``((bn_acc, bn_loss), (no_bn_acc, no_bn_loss))``."""
    results = ExperimentResults("mlp-solver")
    for seed, pair in enumerate(pairs):
        for variant, (acc, loss) in zip(("bn", "no-bn"), pair, strict=True):
            results.runs.setdefault(variant, []).append(
                RunRecord(
                    Path(f"{variant}-{seed}"),
                    "mlp-solver",
                    variant,
                    seed,
                    {},
                    False,
                    {},
                    {"metrics": {"test_accuracy": acc, "test_loss": loss}},
                    None,
                )
            )
    return results


def _like_the_original() -> list[tuple[tuple[float, float], tuple[float, float]]]:
    return [
        (
            (r["bn_test_accuracy"], r["bn_test_loss"]),
            (r["nn_test_accuracy"], r["nn_test_loss"]),
        )
        for r in load_reference(REFERENCE_FILE)
    ]


def test_claims_hold_when_bnlab_matches_the_seeds_own_code() -> None:
    same = _results(_like_the_original())
    verdicts = [c.check(same) for c in SPEC.claims]
    n = len(load_reference(REFERENCE_FILE))
    assert [verdict_text(v) for v in verdicts] == ["holds: consistent with the original"] * 3
    assert all(f"n = {n} bnlab seeds vs {n} original runs" in v.basis for v in verdicts)
    assert verdicts[0].reference.startswith("BN − no BN, same run: ")
    assert f"(n={n} runs)" in verdicts[0].reference
    assert "literal criterion" in verdicts[0].basis and "literal > 96.00%" in verdicts[2].basis


def test_claims_fail_when_bnlab_contradicts_the_seeds_own_code() -> None:
    contrary = _results([((0.94 + d, 0.25), (0.97 + d, 0.10)) for d in (-0.002, 0.0, 0.002)])
    verdicts = [c.check(contrary) for c in SPEC.claims]
    assert [v.holds for v in verdicts] == [False, False, False]
    assert [verdict_text(v) for v in verdicts] == ["bnlab worse than the original"] * 3
    assert "literal criterion does not hold" in verdicts[0].basis
    assert SPEC.claims[0].check(ExperimentResults("mlp-solver")).holds is None


def test_the_reference_curves_follow_the_seeds_epochs() -> None:
    validation = next(c for c in SPEC.curves if c.key == "validation_accuracy")
    steps, per_run = validation.references[0].curves()
    assert steps == [1718 * (e + 1) for e in range(10)]
    assert len(per_run) == len(load_reference(REFERENCE_FILE))
    assert all(0.9 < v <= 1.0 for run in per_run for v in run)


@pytest.mark.slow
def test_full_size_on_real_mnist(tmp_path: Path) -> None:
    """The seed's sizes on the real MNIST, seed 0 of both networks (about 1-2 min)."""
    from bnlab.data import DataError

    try:
        load_mnist(progress=False)
    except DataError as exc:
        pytest.skip(f"real MNIST not available: {exc}")
    out = run_experiment(SPEC, out_dir=tmp_path, seeds=1)
    metrics = {o.variant: o.metrics for o in out}
    assert metrics["bn"]["steps_per_epoch"] == 1718
    assert metrics["bn"]["test_accuracy"] > metrics["no-bn"]["test_accuracy"]
    assert metrics["bn"]["test_accuracy"] > 0.96
