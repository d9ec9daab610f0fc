"""bnlab.doctor: one deliberately broken model per bug, each found (with a fix); a healthy
model reports healthy; the model is never changed (state, modes, RNG).
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.tools.doctor import CHECKS, doctor


def _mlp(bias: bool = False, **bn: object) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            fc=nn.Linear(6, 16, bias=bias),
            bn=bnlab.BatchNorm1d(16, **bn),  # type: ignore[arg-type]
            act=nn.ReLU(),
            out=nn.Linear(16, 3),
        )
    )


def _cnn(**bn: object) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 4, 3, bias=False),
            bn=nn.BatchNorm2d(4, **bn),  # type: ignore[arg-type]
            act=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            out=nn.Linear(4, 3),
        )
    )


def _data(n: int, shape: tuple[int, ...] = (6,)) -> torch.Tensor:
    return torch.randn(n, *shape) * 2 + 0.5


def _trained(net: nn.Module, shape: tuple[int, ...] = (6,)) -> nn.Module:
    net.train()
    with torch.no_grad():
        for _ in range(40):  # settle the EMA on the data distribution
            net(_data(64, shape))
    return net.eval()


def _snapshot(net: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    return {k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()]


def _diagnose(net: nn.Module, batch: torch.Tensor, **kw: object) -> bnlab.DoctorReport:
    """doctor(), asserting it left the model, its modes and the RNG exactly as they were."""
    state, modes = _snapshot(net)
    rng = torch.random.get_rng_state()
    report = doctor(net, batch, **kw)  # type: ignore[arg-type]
    for key, value in net.state_dict().items():
        assert torch.allclose(value, state[key], rtol=0, atol=0, equal_nan=True), key
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.random.get_rng_state(), rng)
    for finding in report.findings:
        assert finding.code in CHECKS and finding.fix
    return report


def test_healthy_model_reports_healthy() -> None:
    net = _trained(_mlp())
    report = _diagnose(net, _data(64))
    assert report.healthy, str(report)
    assert "healthy: no problems found" in str(report)
    cnn = _trained(_cnn(), (2, 6, 6))
    assert _diagnose(cnn, _data(32, (2, 6, 6))).healthy


def test_finds_batch_norm_left_in_training_mode() -> None:
    net = _trained(_mlp()).train()
    report = _diagnose(net, _data(64))
    assert report.codes()[0] == "train-mode"
    assert report.findings[0].layers == ("bn",) and "model.eval()" in report.findings[0].fix


def test_finds_single_example_disagreeing_with_the_batch() -> None:
    # Seed 001's pitfall: batch statistics at inference (here: no running statistics).
    net = _trained(_cnn(track_running_stats=False), (2, 6, 6))
    report = _diagnose(net, _data(16, (2, 6, 6)))
    assert report.codes() == ["single-vs-batched"]
    assert "agrees on" in report.findings[0].message
    assert "track_running_stats=True" in report.findings[0].fix
    # A BatchNorm1d left in training mode cannot even take one example: also reported.
    net1d = _trained(_mlp()).train()
    assert "single-vs-batched" in _diagnose(net1d, _data(64)).codes()


def test_finds_running_statistics_never_updated() -> None:
    net = _mlp().eval()  # never trained: mean 0, var 1, no batch counted
    report = _diagnose(net, _data(64))
    assert "stats-never-updated" in report.codes()
    finding = report.findings[report.codes().index("stats-never-updated")]
    assert finding.layers == ("bn",) and "precise_bn" in finding.fix


def test_finds_a_bias_that_batch_norm_cancels() -> None:
    net = _trained(_mlp(bias=True))
    report = _diagnose(net, _data(64))
    assert report.codes() == ["bias-before-bn"]
    assert report.findings[0].layers == ("fc", "bn") and "bias=False" in report.findings[0].fix


def test_finds_batches_too_small_for_batch_statistics() -> None:
    net = _trained(_mlp())
    report = _diagnose(net, _data(4))
    assert report.codes() == ["small-batch"] and report.findings[0].severity == "warning"
    assert _diagnose(net, _data(64), train_batch_size=2).codes() == ["small-batch"]
    assert _diagnose(net, _data(64)).healthy


@pytest.mark.parametrize("running_var,what", [(1e-12, "explodes"), (1e12, "collapses")])
def test_finds_eval_outputs_that_explode_or_collapse(running_var: float, what: str) -> None:
    net = _trained(_mlp())
    net.bn.running_var.fill_(running_var)
    report = _diagnose(net, _data(64))
    assert "eval-output" in report.codes() and "stats-mismatch" in report.codes()
    finding = report.findings[report.codes().index("eval-output")]
    assert what in finding.message and finding.severity == "error"


def test_finds_non_finite_eval_outputs() -> None:
    net = _trained(_mlp())
    net.bn.running_mean[3] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the probes' guard refusals are not the user's
        report = _diagnose(net, _data(64))
    finding = report.findings[report.codes().index("eval-output")]
    assert "NaN/Inf" in finding.message


def test_report_prints_and_serializes() -> None:
    report = _diagnose(_mlp(bias=True).train(), _data(8))
    text = str(report)
    assert text.count("fix:") == len(report.findings) >= 3
    data = json.loads(json.dumps(report.to_dict()))
    assert data["healthy"] is False and data["batch_norm_layers"] == ["bn"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2 examples"):
        doctor(_mlp(), _data(1))
    with pytest.raises(TypeError, match="Module"):
        doctor("model", _data(4))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensor"):
        doctor(_mlp(), [[1.0, 2.0]])


def test_every_demo_case_finds_exactly_its_bug() -> None:
    from bnlab.norm.tools.doctor import demo_cases

    cases = demo_cases()
    assert cases[0].expected == () and len(cases) == 7
    for case in cases:
        report = _diagnose(case.model, case.batch, **case.options)
        assert tuple(report.codes()) == case.expected, (case.name, str(report))


def test_cli_demo(capsys: pytest.CaptureFixture[str]) -> None:
    from bnlab.cli.main import main

    assert main(["doctor", "--demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("== ") == 7 and "healthy: no problems found" in out
    assert main(["doctor"]) == 2  # neither a run directory nor --demo


def _write_run(root: Path, data_dir: Path) -> Path:
    """A deep-cnn run directory as ``bnlab run`` writes it: config.json and a checkpoint
    whose model has precise statistics (the network is shrunk to 3 conv layers)."""
    from bnlab.data import load_mnist
    from bnlab.experiments import config_to_dict, get_experiment
    from bnlab.experiments.deep_cnn import build_model
    from bnlab.train.checkpoint import Checkpoint
    from bnlab.train.rundir import RunDir

    config = get_experiment("deep-cnn").config_for("bn", 0, overrides={"num_conv_layers": "3"})
    model = build_model(config)
    images = load_mnist(data_dir, progress=False).train.images
    bnlab.precise_bn(model, images[:256].split(64))
    run = RunDir(root / "deep-cnn" / "bn" / "seed-0")
    resolved = {"experiment": "deep-cnn", "variant": "bn", "seed": 0, "quick": False}
    run.write_json(RunDir.CONFIG, {**resolved, "config": config_to_dict(config)})
    run.checkpoint_path("train").parent.mkdir(parents=True)
    Checkpoint("train", 800, 800, model.state_dict(), {}, {}, {}).save(run.checkpoint_path("train"))
    return run.path


def test_cli_checks_a_trained_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnlab.cli.main import main
    from bnlab.data.synthetic import write_fake_mnist

    data_dir = write_fake_mnist(tmp_path / "mnist", n_train=360, n_test=80)
    run_dir = _write_run(tmp_path / "runs", data_dir)
    code = main(["doctor", str(run_dir), "--data-dir", str(data_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == "deep-cnn/bn/seed-0 (train checkpoint, step 800)"
    assert len(report["batch_norm_layers"]) == 4  # 3 conv layers and the dense layer
    assert report["batch_shape"] == [64, 1, 28, 28]
    assert report["healthy"], report["findings"]  # precise statistics, eval mode, batch 64
    assert code == 0
    # A model whose statistics were never collected: the doctor says so, exit status 1.
    state = torch.load(run_dir / "checkpoints" / "train.pt", weights_only=True)
    for key in [k for k in state["model"] if k.endswith(("running_mean", "running_var"))]:
        state["model"][key] = torch.zeros_like(state["model"][key]) + key.endswith("var")
    for key in [k for k in state["model"] if k.endswith("num_batches_tracked")]:
        state["model"][key].zero_()
    torch.save(state, run_dir / "checkpoints" / "train.pt")
    assert main(["doctor", str(run_dir), "--data-dir", str(data_dir)]) == 1
    assert "stats-never-updated" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path)]) == 2  # not a run directory
