"""The batch-norm-in-practice experiments (bn-batch-size, bn-learning-rate,
renorm-small-batch, precise-bn): registration, tiny engine runs on fake MNIST, their claims
on hand-made results (holding, failing, not measured), the non-i.i.d. sampler; full size
in the slow suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnlab.data import load_mnist
from bnlab.data.batching import NonIIDBatches
from bnlab.data.datasets import Split
from bnlab.data.synthetic import write_fake_mnist
from bnlab.experiments import experiment_names, get_experiment, run_one
from bnlab.report import ExperimentResults, RunRecord
from bnlab.report.spec import Figure, Table
from bnlab.report.sweep import sweep_blocks

NAMES = ("bn-batch-size", "bn-learning-rate", "renorm-small-batch", "precise-bn")


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> object:
    directory = write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=480, n_test=60)
    return load_mnist(directory, progress=False)


def test_registered_with_their_sweeps() -> None:
    assert set(NAMES) <= set(experiment_names())
    sizes = get_experiment("bn-batch-size").variant_names()
    assert sizes[:2] == ("bn-b2", "bn-b4") and "gn-b64" in sizes and len(sizes) == 12
    bs2 = get_experiment("bn-batch-size").config_for("bn-b2", 0)
    bs64 = get_experiment("bn-batch-size").config_for("gn-b64", 0)
    assert bs2.num_steps * 2 == bs64.num_steps * 64 == 16_384  # same examples seen
    rates = get_experiment("bn-learning-rate").variant_names()
    assert "none-lr3" in rates and "bn-lr0.03" in rates and len(rates) == 12
    renorm = get_experiment("renorm-small-batch").config_for("renorm-noniid", 1)
    assert renorm.norm == "renorm" and renorm.classes_per_batch == 1 and renorm.seed == 1
    assert get_experiment("precise-bn").config_for("bn-800", 0).num_batches == 800


# (experiment, variant, overrides): one tiny run of each through the engine.
TINY = [
    ("bn-batch-size", "bn-b2", {"examples": "16"}),
    ("bn-batch-size", "gn-b4", {"examples": "16"}),
    ("bn-learning-rate", "bn-lr0.3", {"num_steps": "6", "eval_every": "3"}),
    ("renorm-small-batch", "renorm-noniid", {"num_steps": "12"}),
    ("precise-bn", "bn-200", {"num_conv_layers": "3", "num_batches": "6"}),
]


@pytest.mark.parametrize("experiment,variant,overrides", TINY)
def test_tiny_engine_run(
    experiment: str, variant: str, overrides: dict[str, str], fake_mnist: object, tmp_path: Path
) -> None:
    outcome = run_one(
        get_experiment(experiment),
        variant,
        0,
        fake_mnist,
        out_dir=tmp_path,
        quick=True,
        overrides=overrides,
        log=lambda _: None,
    )
    assert outcome.status == "done"
    metrics = json.loads((outcome.path / "result.json").read_text())["metrics"]
    if experiment == "precise-bn":
        assert {"ema_single_accuracy", "precise_single_accuracy", "precise_gain"} <= set(metrics)
        assert metrics["precise_agreement"] == 1.0  # eval mode: one at a time = batched
        stats = json.loads((outcome.path / "artefacts" / "bn_statistics.json").read_text())
        assert len(stats["precise"]) == 4  # 3 conv layers and the dense layer
    else:
        assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["diverged"] == 0.0


def test_a_diverging_rate_is_recorded_not_raised(fake_mnist: object, tmp_path: Path) -> None:
    outcome = run_one(
        get_experiment("bn-learning-rate"),
        "none-lr10",
        0,
        fake_mnist,
        out_dir=tmp_path,
        quick=True,
        overrides={"learning_rate": "1e6", "num_steps": "8"},
        log=lambda _: None,
    )
    metrics = json.loads((outcome.path / "result.json").read_text())["metrics"]
    assert metrics["diverged"] == 1.0 and metrics["test_accuracy"] == 0.1


def _results(name: str, table: dict[str, list[dict[str, float]]]) -> ExperimentResults:
    """Hand-made results: variant -> one metrics dict per seed (seeds 0, 1, ...)."""
    results = ExperimentResults(name)
    for variant, per_seed in table.items():
        results.runs[variant] = [
            RunRecord(Path(variant), name, variant, k, {}, False, {}, {"metrics": m}, None)
            for k, m in enumerate(per_seed)
        ]
    return results


def _verdicts(name: str, results: ExperimentResults) -> list[bool | None]:
    return [claim.check(results).holds for claim in get_experiment(name).claims]


def _acc(*values: float) -> list[dict[str, float]]:
    return [{"test_accuracy": v} for v in values]


def test_batch_size_claims() -> None:
    good = {"bn-b2": _acc(0.70, 0.72), "bn-b32": _acc(0.95, 0.95)}
    good |= {"gn-b2": _acc(0.94, 0.94), "gn-b32": _acc(0.94, 0.935)}
    assert _verdicts("bn-batch-size", _results("bn-batch-size", good)) == [True, True, True]
    bad = good | {"bn-b2": _acc(0.94, 0.72), "gn-b2": _acc(0.80, 0.94)}
    assert _verdicts("bn-batch-size", _results("bn-batch-size", bad)) == [False, False, False]
    assert _verdicts("bn-batch-size", ExperimentResults("x")) == [None, None, None]


def test_learning_rate_claims() -> None:
    bn = dict(
        zip((0.03, 0.1, 0.3, 1.0, 3.0, 10.0), (0.94, 0.95, 0.95, 0.94, 0.93, 0.1), strict=True)
    )
    none = dict(zip(bn, (0.88, 0.91, 0.93, 0.88, 0.11, 0.1), strict=True))
    table = {f"bn-lr{lr:g}": _acc(a) for lr, a in bn.items()}
    table |= {f"none-lr{lr:g}": _acc(a) for lr, a in none.items()}
    assert _verdicts("bn-learning-rate", _results("bn-learning-rate", table)) == [True, True]
    worse = table | {"bn-lr1": _acc(0.5), "bn-lr3": _acc(0.5), "bn-lr0.3": _acc(0.92)}
    assert _verdicts("bn-learning-rate", _results("bn-learning-rate", worse)) == [False, False]
    missing = {k: v for k, v in table.items() if k != "bn-lr10"}
    assert _verdicts("bn-learning-rate", _results("bn-learning-rate", missing))[0] is None


def test_renorm_claims() -> None:
    good = {"bn-b2": _acc(0.70), "renorm-b2": _acc(0.79)}
    good |= {"bn-noniid": _acc(0.19), "renorm-noniid": _acc(0.36)}
    assert _verdicts("renorm-small-batch", _results("renorm-small-batch", good)) == [True, True]
    bad = good | {"renorm-b2": _acc(0.69), "renorm-noniid": _acc(0.19)}
    assert _verdicts("renorm-small-batch", _results("renorm-small-batch", bad)) == [False, False]


def test_precise_claims() -> None:
    gains = {"bn-800": [{"precise_gain": 0.0}, {"precise_gain": 0.002}]}
    gains["bn-200"] = [{"precise_gain": 0.01}]
    assert _verdicts("precise-bn", _results("precise-bn", gains)) == [True, True]
    gains["bn-800"].append({"precise_gain": -0.001})
    assert _verdicts("precise-bn", _results("precise-bn", gains)) == [False, True]


def test_non_iid_batches_hold_few_classes_and_resume() -> None:
    split = Split(torch.rand(100, 1, 2, 2), torch.arange(100) % 10)
    batches = NonIIDBatches(split, 16, classes_per_batch=2, seed=3)
    for _ in range(5):
        _, labels = batches.next_batch()
        assert len(set(labels.tolist())) <= 2
    state = batches.state_dict()
    expected = [batches.next_batch()[1] for _ in range(3)]
    again = NonIIDBatches(split, 16, classes_per_batch=2, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(again.next_batch()[1], e) for e in expected)
    with pytest.raises(ValueError, match="classes_per_batch"):
        NonIIDBatches(split, 16, classes_per_batch=11, seed=0)


def test_sweep_blocks_draw_and_tabulate() -> None:
    results = _results("x", {"bn-b2": _acc(0.7, 0.8), "bn-b4": _acc(0.9), "gn-b2": _acc(0.93)})
    groups = {"BN": {2.0: "bn-b2", 4.0: "bn-b4"}, "GN": {2.0: "gn-b2", 4.0: "gn-b4"}}
    figure, table = sweep_blocks(
        results, groups, "test_accuracy", xlabel="batch", ylabel="acc", title="t", name="n"
    )
    assert isinstance(figure, Figure) and figure.png.startswith(b"\x89PNG")
    assert isinstance(table, Table) and table.columns == ("norm", "2", "4")
    assert table.rows[0] == ("BN", "75.00 ± 7.07%", "90.00%") and table.rows[1][2] == "–"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_claims_hold(name: str, tmp_path: Path) -> None:
    """One seed of every variant on the real MNIST (minutes each); every claim holds."""
    from bnlab.experiments import run_experiment
    from bnlab.report import load_results

    spec = get_experiment(name)
    run_experiment(spec, seeds=1, out_dir=tmp_path)
    results = load_results(tmp_path)[name]
    verdicts = [(c.text, c.check(results)) for c in spec.claims]
    assert all(v.holds for _, v in verdicts), verdicts
