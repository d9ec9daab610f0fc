"""The engine benchmark: bnlab's run_one and run_group against plain PyTorch loops, and
batched seeds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.bench import engine as engine_module
from bnlab.bench import report
from bnlab.bench.engine import (
    ENGINE_CASES,
    ENGINE_EXPERIMENTS,
    GROUP_SEEDS,
    QUICK_ENGINE_CASES,
    EngineCase,
    EngineRow,
    SeedBatch,
    batched_seeds,
    format_engine,
    load_engine_data,
    plain_run,
    time_engine_case,
)
from bnlab.bench.report import BenchConfig, check_claims, format_claims
from bnlab.cli.main import main
from bnlab.errors import BnlabError
from bnlab.experiments.base import RunContext
from bnlab.experiments.registry import get_experiment
from bnlab.experiments.sigmoid_mlp import SigmoidMLPConfig

_QUICK = {c.label: c for c in QUICK_ENGINE_CASES}
_NOT_FAST = {"channels_last": "false", "fused_adam": "false"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return load_engine_data(ENGINE_EXPERIMENTS, fake_dir=tmp_path_factory.mktemp("mnist"))


def _with(case: EngineCase, **overrides: str) -> EngineCase:
    return EngineCase(case.experiment, case.variant, {**case.overrides, **overrides})


def test_the_rows_are_the_issue_15_rows_and_the_group_rows() -> None:
    labels = [c.label for c in ENGINE_CASES]
    assert labels == [
        "deep-cnn/bn",
        "deep-cnn/no-bn",
        "sigmoid-mlp/no-bn",
        "sigmoid-mlp/bn",
        "sigmoid-mlp/no-bn x3 (group)",
        "sigmoid-mlp/bn x3 (group)",
    ]
    assert [c.label for c in QUICK_ENGINE_CASES] == labels
    # Shortened runs with their own schedules: only the step count is overridden.
    assert [dict(c.overrides) for c in ENGINE_CASES] == [
        {"num_batches": "200"},
        {"num_batches": "200"},
        *[{"num_steps": "4000"}] * 4,
    ]
    # The group rows: bnlab run's default seeds 0, 1, 2, the plain side each in turn.
    group = ENGINE_CASES[4]
    assert GROUP_SEEDS == 3 and group.seeds == (0, 1, 2) and ENGINE_CASES[2].seeds == (0,)
    assert [(m.seed, m.group, m.label) for m in group.members()] == [
        (s, 1, "sigmoid-mlp/no-bn") for s in (0, 1, 2)
    ]
    assert all(dict(m.overrides) == {"num_steps": "4000"} for m in group.members())


@pytest.mark.parametrize("label", ["deep-cnn/bn", "deep-cnn/no-bn"])
def test_engine_and_plain_loop_train_the_same_model_on_the_same_batches(
    label: str, data: dict[str, Any]
) -> None:
    # Without the engine's speed settings (channels-last, fused Adam) the engine runs the
    # very operations of the plain loop: every per-step loss and final metric is equal.
    case = _with(_QUICK[label], **_NOT_FAST)
    row = time_engine_case(case, data[case.experiment], repeats=1, warmup=False)
    assert [len(losses) for losses in row.engine_losses] == [row.steps] == [6]
    assert row.engine_losses == row.plain_losses
    assert row.loss_max_abs_diff() == 0.0
    for name, value in row.plain_metrics[0].items():
        assert row.engine_metrics[0][name] == value, name
    # With them (the engine as configured) the same model, rounded differently.
    fast = time_engine_case(_QUICK[label], data[case.experiment], repeats=1, warmup=False)
    assert fast.engine_settings["channels_last"] and fast.engine_settings["fused_adam"]
    assert fast.engine_losses != fast.plain_losses  # the settings did change something
    assert fast.loss_max_abs_diff() < 1e-5
    assert fast.plain_losses == row.plain_losses  # the plain loop never takes them


@pytest.mark.parametrize("label", ["sigmoid-mlp/no-bn", "sigmoid-mlp/bn"])
def test_sigmoid_mlp_engine_equals_its_plain_loop(label: str, data: dict[str, Any]) -> None:
    case = _QUICK[label]
    row = time_engine_case(case, data[case.experiment], repeats=1, warmup=False)
    assert [len(losses) for losses in row.plain_losses] == [row.steps] == [30]
    assert row.engine_losses == row.plain_losses
    (engine,), (plain,) = row.engine_metrics, row.plain_metrics
    assert engine["test_accuracy"] == plain["test_accuracy"]
    if label.endswith("/bn"):  # the single-image pitfall is measured by both
        assert engine["single_image_accuracy"] == pytest.approx(plain["single_image_accuracy"])


@pytest.mark.parametrize("label", ["sigmoid-mlp/no-bn x3 (group)", "sigmoid-mlp/bn x3 (group)"])
def test_group_row_trains_each_seed_as_its_plain_loop(label: str, data: dict[str, Any]) -> None:
    # One run_group of seeds 0-2 against the three plain loops in turn: each seed's
    # per-step losses and final metrics equal its own plain loop's, bit for bit.
    case = _QUICK[label]
    row = time_engine_case(case, data[case.experiment], repeats=1, warmup=False)
    assert [len(losses) for losses in row.engine_losses] == [row.steps] * 3 == [30] * 3
    assert row.engine_losses == row.plain_losses
    assert row.loss_max_abs_diff() == 0.0
    assert len({tuple(losses) for losses in row.engine_losses}) == 3  # three different seeds
    for engine, plain in zip(row.engine_metrics, row.plain_metrics, strict=True):
        assert engine["test_accuracy"] == plain["test_accuracy"]
        assert engine["test_loss"] == plain["test_loss"]
    # The times are of the whole pass (all three seeds), the train times their sum.
    assert row.engine_train[0] < row.engine[0] and row.plain_train[0] < row.plain[0]
    d = row.as_dict()
    assert d["label"] == label and d["seeds"] == [0, 1, 2] and d["group"] == 3
    assert d["loss_max_abs_diff"] == 0.0
    assert d["final_loss"]["engine"] == d["final_loss"]["plain"]
    assert len(d["final_loss"]["engine"]) == len(d["final_metrics"]["engine"]) == 3
    json.dumps(d)


def _counting_spec(
    monkeypatch: pytest.MonkeyPatch, run_group: Any = None
) -> tuple[list[list[int]], list[int]]:
    """Make the bench see a sigmoid-mlp spec whose ``run_group`` and ``run`` record the
    seeds they train (``run_group`` replaced by ``run_group`` when given)."""
    spec = get_experiment("sigmoid-mlp")
    inner = run_group or spec.run_group
    assert inner is not None
    groups: list[list[int]] = []
    singles: list[int] = []

    def counting_group(
        configs: Sequence[Any], data: Any, ctxs: Sequence[RunContext]
    ) -> list[dict[str, float]]:
        groups.append([c.seed for c in configs])
        return inner(configs, data, ctxs)

    def counting_run(config: Any, data: Any, ctx: RunContext) -> dict[str, float]:
        singles.append(config.seed)
        return spec.run(config, data, ctx)

    counted = dataclasses.replace(spec, run_group=counting_group, run=counting_run)
    monkeypatch.setattr(
        engine_module,
        "get_experiment",
        lambda name: counted if name == "sigmoid-mlp" else get_experiment(name),
    )
    return groups, singles


def test_group_row_is_one_group_run_not_three_runs(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fails if the engine side of a group row trained its seeds as single runs.
    groups, singles = _counting_spec(monkeypatch)
    case = _QUICK["sigmoid-mlp/no-bn x3 (group)"]
    row = time_engine_case(case, data["sigmoid-mlp"], repeats=2)
    assert groups == [[0, 1, 2]] * 3  # the warm-up pass and two repeats, one group each
    assert singles == []
    assert row.engine_losses == row.plain_losses
    single = time_engine_case(_QUICK["sigmoid-mlp/no-bn"], data["sigmoid-mlp"], repeats=1)
    assert singles == [0, 0] and len(groups) == 3  # a single row: run_one, no group
    assert single.engine_losses == [row.engine_losses[0]]  # seed 0 alone = seed 0 grouped


def test_a_group_that_fell_back_to_single_runs_is_refused(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # runner.run_group trains the runs one at a time after an error of the group, and
    # says so in its log only: the row must not time that as the group run.
    def broken(configs: Sequence[Any], data: Any, ctxs: Sequence[RunContext]) -> Any:
        raise RuntimeError("stack broke")

    groups, singles = _counting_spec(monkeypatch, run_group=broken)
    case = _QUICK["sigmoid-mlp/bn x3 (group)"]
    with pytest.raises(BnlabError, match=r"did not train seeds \[0, 1, 2\] as one group"):
        time_engine_case(case, data["sigmoid-mlp"], repeats=1, warmup=False)
    assert groups == [[0, 1, 2]] and singles == [0, 1, 2]  # what the guard caught
    with pytest.raises(BnlabError, match="stack broke"):
        time_engine_case(case, data["sigmoid-mlp"], repeats=1, warmup=False)


def test_a_different_seed_gives_other_batches(data: dict[str, Any]) -> None:
    # The equality above is not vacuous: another seed's plain loop trains differently.
    case = _QUICK["sigmoid-mlp/no-bn"]
    other = EngineCase(case.experiment, case.variant, case.overrides, seed=1)
    assert (
        plain_run(case, data["sigmoid-mlp"]).losses != plain_run(other, data["sigmoid-mlp"]).losses
    )


def test_plain_loop_restores_threads_and_denormals(data: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    case = _with(_QUICK["sigmoid-mlp/no-bn"], num_threads="2")
    plain_run(case, data["sigmoid-mlp"])
    assert torch.get_num_threads() == 1
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # denormals kept again


def test_rows_alternate_and_report_the_keys_the_report_reads(data: dict[str, Any]) -> None:
    case = _QUICK["deep-cnn/bn"]
    row = time_engine_case(case, data["deep-cnn"], repeats=3)
    assert len(row.engine) == len(row.plain) == len(row.engine_train) == 3
    assert all(t > 0 for t in row.engine + row.plain)
    assert all(train < wall for train, wall in zip(row.engine_train, row.engine, strict=True))
    assert all(train < wall for train, wall in zip(row.plain_train, row.plain, strict=True))
    d = row.as_dict()
    assert d["experiment"] == "deep-cnn" and d["variant"] == "bn" and d["steps"] == 6
    assert d["num_threads"] == 1 and d["flush_denormal"] and d["repeats"] == 3
    for key in ("engine", "plain", "engine_train", "plain_train"):
        spread = d[key]
        assert spread["min_s"] <= spread["median_s"] <= spread["max_s"]
        assert len(spread["times_s"]) == 3
    assert d["ratio"] == d["engine"]["median_s"] / d["plain"]["median_s"]
    assert d["train_ratio"] == d["engine_train"]["median_s"] / d["plain_train"]["median_s"]
    assert set(d["final_loss"]) == {"engine", "plain"}
    assert d["label"] == "deep-cnn/bn" and d["seeds"] == [0] and d["group"] == 1
    assert len(d["final_loss"]["engine"]) == 1
    assert "test_accuracy" in d["final_metrics"]["engine"][0]
    json.dumps(d)  # JSON-ready


def _row(
    engine: list[float], plain: list[float], label: str = "deep-cnn/bn", group: int = 1
) -> EngineRow:
    experiment, variant = label.split("/")
    return EngineRow(
        EngineCase(experiment, variant, group=group),
        10,
        1,
        {},
        engine,
        plain,
        engine,
        plain,
        [[1.0]] * group,
        [[1.0]] * group,
        [{}] * group,
        [{}] * group,
    )


def test_loss_diff_is_the_worst_seed_against_its_own_plain_loop() -> None:
    row = _row([1.0], [1.0], "sigmoid-mlp/bn", group=3)
    row.engine_losses = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.5]]
    row.plain_losses = [[1.0, 2.0], [3.25, 4.0], [5.0, 6.0]]
    assert row.loss_max_abs_diff() == 0.5
    row.plain_losses = [[1.0, 2.0], [3.0, 4.0]]  # a seed missing
    assert row.loss_max_abs_diff() != row.loss_max_abs_diff()  # NaN
    row.plain_losses = [[1.0, 2.0], [3.0, 4.0], [5.0]]  # a seed short of steps
    assert row.loss_max_abs_diff() != row.loss_max_abs_diff()


def test_ratio_is_of_the_two_medians_and_the_claim_takes_the_worst() -> None:
    row = _row([1.0, 3.0, 2.0], [2.0, 2.0, 4.0])
    assert row.ratio == 1.0  # median 2 / median 2
    assert row.paired_ratio == 0.5  # median of 0.5, 1.5, 0.5: not what the claim uses
    faster = _row([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], "sigmoid-mlp/no-bn")
    slower = _row([3.0, 3.0, 3.0], [2.0, 2.0, 2.0], "sigmoid-mlp/bn")
    engine: dict[str, Any] = {
        "rows": [faster.as_dict(), slower.as_dict()],
        "batched_seeds": {"k": 3, "ratios": {"vmap/separate": 1.3, "bmm/separate": 1.1}},
    }
    claims = check_claims([], None, engine=engine)
    never_slower, stacking = claims
    assert never_slower["claim"] == "the engine is never slower than the plain loop"
    assert never_slower["measured"] == 1.5 and never_slower["worst_case"] == "sigmoid-mlp/bn"
    assert not never_slower["holds"]
    assert stacking["claim"].startswith("stacking 3 sigmoid-MLP seeds could save at least 5%")
    assert stacking["measured"] == 1.1 and stacking["best_case"] == "bmm/separate"
    assert not stacking["holds"]  # neither way of stacking saves anything: no premise
    engine["rows"] = [faster.as_dict()]
    engine["batched_seeds"]["ratios"]["bmm/separate"] = 0.9
    never_slower, stacking = check_claims([], None, engine=engine)
    assert never_slower["holds"] and never_slower["measured"] == 0.5
    assert stacking["holds"]
    # Judged against one model alone where that was measured.
    engine["batched_seeds"]["ratios"].update({"bmm/single": 0.96, "vmap/single": 1.4})
    _, stacking = check_claims([], None, engine=engine)
    assert stacking["best_case"] == "bmm/single" and not stacking["holds"]
    engine["batched_seeds"]["ratios"]["bmm/single"] = 0.54  # as recorded 2026-12-06 (bd86a16)
    _, stacking = check_claims([], None, engine=engine)
    assert stacking["holds"] and stacking["measured"] == 0.54
    text = format_claims(claims)
    assert "[FAILS] the engine is never slower than the plain loop: 1.500" in text
    assert "(best: bmm/separate)" in text
    assert check_claims([], None, engine=None) == []


def test_the_never_slower_claim_takes_the_group_rows_too() -> None:
    single = _row([1.0], [2.0], "sigmoid-mlp/no-bn")
    group = _row([3.3], [3.0], "sigmoid-mlp/no-bn", group=3)
    engine = {"rows": [single.as_dict(), group.as_dict()]}
    (never_slower,) = check_claims([], None, engine=engine)
    assert never_slower["worst_case"] == "sigmoid-mlp/no-bn x3 (group)"
    assert never_slower["measured"] == 1.1 and not never_slower["holds"]
    text = format_claims([never_slower])
    assert "(worst: sigmoid-mlp/no-bn x3 (group))" in text


def test_unsupported_cases_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sigmoid-mlp variants with one are: no-bn, bn"):
        plain_run(EngineCase("sigmoid-mlp", "bn-population"), data["sigmoid-mlp"])
    with pytest.raises(ValueError, match="no plain loop for experiment 'image-fcn'"):
        time_engine_case(EngineCase("image-fcn", "bn"), None)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_engine_case(_QUICK["deep-cnn/bn"], data["deep-cnn"], repeats=0)
    with pytest.raises(ValueError, match="deep-cnn has no group run"):
        time_engine_case(EngineCase("deep-cnn", "bn", group=3), data["deep-cnn"])
    with pytest.raises(ValueError, match="group must be >= 1"):
        EngineCase("sigmoid-mlp", "bn", group=0)
    with pytest.raises(ValueError, match=r"plain_run runs one seed; .* has 3"):
        plain_run(_QUICK["sigmoid-mlp/bn x3 (group)"], data["sigmoid-mlp"])


def test_batched_seeds_compute_the_separate_models_updates() -> None:
    k, batch = 3, 8
    images = torch.rand(k, batch, 784)
    labels = torch.randint(0, 10, (k, batch))
    seeds = SeedBatch(SigmoidMLPConfig(), images, labels)
    before = seeds.weights("separate")
    assert [tuple(w.shape) for w in before] == [(3, 784, 100), (3, 100, 100), (3, 100, 10)]
    for how in ("vmap", "bmm"):
        for a, b in zip(before, seeds.weights(how), strict=True):
            assert torch.equal(a, b)  # the same starting weights, seeds 0, 1, 2
    assert not torch.equal(before[0][0], before[0][1])  # and different seeds differ
    for _ in range(3):
        seeds.step_separate()
        seeds.step_vmap()
        seeds.step_bmm()
    after = seeds.weights("separate")
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for how in ("vmap", "bmm"):
        for a, b in zip(after, seeds.weights(how), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="without BN"):
        SeedBatch(SigmoidMLPConfig(norm="batch"), images, labels)


def test_batched_seeds_row(data: dict[str, Any]) -> None:
    result = batched_seeds(data["sigmoid-mlp"], budget_s=0.0, min_rounds=2, max_rounds=2)
    assert result["k"] == 3 and result["num_threads"] == 1 and result["batch"] == 60
    assert set(result["times"]) == {"single", "separate", "vmap", "bmm"}
    assert set(result["ratios"]) == {"vmap/separate", "bmm/separate", "vmap/single", "bmm/single"}
    sep = result["times"]["separate"]
    assert 0 < sep["min_s"] <= sep["median_s"]
    assert torch.get_num_threads() == 1


def test_format_engine_shows_every_row() -> None:
    rows = [
        _row([2.0], [2.5]).as_dict(),
        _row([1.0], [1.0], "sigmoid-mlp/bn").as_dict(),
        _row([2.7], [3.0], "sigmoid-mlp/bn", group=3).as_dict(),
    ]
    seeds = {
        "k": 3,
        "num_threads": 1,
        "times": {name: {"median_s": 5e-4} for name in ("separate", "vmap", "bmm")},
        "ratios": {"vmap/separate": 1.0, "bmm/separate": 1.0},
    }
    text = format_engine({"rows": rows, "batched_seeds": seeds})
    assert "deep-cnn/bn" in text and "sigmoid-mlp/bn" in text and "0.800" in text
    assert "sigmoid-mlp/bn x3 (group)" in text and "0.900" in text
    assert "ms per model-step: one model alone nan, K models in turn 0.500" in text
    assert "the most stacking could save" in text and "does not batch" not in text


def _resolved_config(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> BenchConfig:
    seen: list[BenchConfig] = []

    def fake(config: BenchConfig, on_case: Any = None) -> dict[str, Any]:
        seen.append(config)
        return {"nets": None, "compiled": [], "engine": None, "claims": [], "cases": []}

    monkeypatch.setattr(report, "run_benchmark", fake)
    assert main(["bench", "--no-progress", *argv]) == 0
    return seen[0]


def test_engine_flag_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "b.json")]
    assert _resolved_config(monkeypatch, out).engine  # on by default
    assert not _resolved_config(monkeypatch, ["--quick", *out]).engine  # off with --quick
    assert _resolved_config(monkeypatch, ["--quick", "--engine", *out]).engine
    assert not _resolved_config(monkeypatch, ["--no-engine", *out]).engine
    only = _resolved_config(monkeypatch, ["--engine-only", "--engine-repeats", "5", *out])
    assert only.engine and not only.matrix and not only.nets and not only.compiled
    assert only.engine_repeats == 5
    with pytest.raises(SystemExit):
        main(["bench", "--engine-repeats", "0"])


def test_bench_quick_engine_writes_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--engine", "--no-nets", "--engine-repeats", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "engine/plain" in printed and "batched seeds" in printed
    assert "the engine is never slower than the plain loop" in printed
    assert "sigmoid-mlp/bn x3 (group)" in printed
    document = json.loads(out.read_text())
    engine = document["engine"]
    assert [r["label"] for r in engine["rows"]] == list(_QUICK)
    for row in engine["rows"]:
        assert row["repeats"] == 1 and row["engine"]["median_s"] > 0
        assert row["ratio"] == pytest.approx(row["engine"]["median_s"] / row["plain"]["median_s"])
    groups = [r for r in engine["rows"] if r["group"] == 3]
    assert [(r["variant"], r["seeds"]) for r in groups] == [("no-bn", [0, 1, 2]), ("bn", [0, 1, 2])]
    for row in groups:  # sigmoid-mlp: bit for bit its plain loops, seed by seed
        assert row["loss_max_abs_diff"] == 0.0
        assert row["final_loss"]["engine"] == row["final_loss"]["plain"]
        assert row["final_metrics"]["engine"] == row["final_metrics"]["plain"]
    assert set(engine["batched_seeds"]["ratios"]) == {
        "vmap/separate",
        "bmm/separate",
        "vmap/single",
        "bmm/single",
    }
    assert engine["data"]["dataset"] == "mnist"
    claims = {c["claim"]: c for c in document["claims"]}
    worst = max(engine["rows"], key=lambda r: r["ratio"])  # over every row, groups too
    never_slower = claims["the engine is never slower than the plain loop"]
    assert never_slower["measured"] == round(worst["ratio"], 3)
    assert never_slower["worst_case"] == worst["label"]
    assert document["cases"]  # the matrix ran too


def test_bench_engine_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--engine-only", "--engine-repeats", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fused/roof" not in printed and "engine/plain" in printed
    document = json.loads(out.read_text())
    assert document["cases"] == [] and document["nets"] is None and document["compiled"] == []
    assert len(document["engine"]["rows"]) == 6
