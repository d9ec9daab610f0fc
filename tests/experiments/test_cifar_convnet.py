"""The cifar-convnet experiment (seed 004): the Keras model and its parameter counts, global
normalization, a quick run on small CIFAR-format data, and the stop before training without
CIFAR-10."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.data import write_fake_cifar10
from bnlab.experiments import ExperimentNotRunError, get_experiment, run_experiment
from bnlab.experiments.cifar_convnet import SPEC, load_data, model_summary, normalize_global
from bnlab.models.cifar import NHWCFlatten, cifar_convnet, format_summary, summarize_model
from bnlab.norm import BatchNorm2d
from bnlab.report import VERDICT_TEXT, load_results
from bnlab.train import read_metrics


@pytest.mark.parametrize("placement", ["before", "after"])
def test_summary_counts_553850_parameters_553626_trainable_224_not(placement: str) -> None:
    rows, text = model_summary(SPEC.config_for(f"bn-{placement}", 0))
    assert sum(r.params for r in rows) == 553_850
    assert sum(r.trainable for r in rows) == 553_626
    assert sum(r.non_trainable for r in rows) == 224
    by_name = {r.name: r for r in rows}
    # The seed's per-layer Param #: convs 432 / 4608 / 18432, BN 4 per channel, dense.
    assert [by_name[n].params for n in ("conv2d", "conv2d_1", "conv2d_2")] == [432, 4608, 18432]
    assert [by_name[n].params for n in ("batch_normalization", "batch_normalization_2")] == [
        64,
        256,
    ]
    assert (by_name["batch_normalization"].trainable, by_name["dense"].params) == (32, 524_800)
    assert by_name["dense_1"].params == 5130 and by_name["flatten"].output_shape == (None, 1024)
    assert "Total params: 553,850" in text and "Non-trainable params: 224" in text


def test_placement_orders_bn_and_the_activation() -> None:
    before = [type(m).__name__ for m in cifar_convnet("before").children()][:4]
    after = [type(m).__name__ for m in cifar_convnet("after").children()][:4]
    assert before == ["Conv2d", "BatchNorm2d", "ELU", "MaxPool2d"]
    assert after == ["Conv2d", "ELU", "BatchNorm2d", "MaxPool2d"]
    net = cifar_convnet("before")
    norms = [m for m in net.modules() if isinstance(m, BatchNorm2d)]
    assert len(norms) == 3 and all(n.eps == 1e-3 and abs(n.momentum - 0.01) < 1e-12 for n in norms)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert torch.equal(NHWCFlatten()(x), x.permute(0, 2, 3, 1).reshape(1, -1))


def test_summary_leaves_the_model_untouched() -> None:
    net = cifar_convnet()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    text = format_summary(summarize_model(net, (3, 32, 32)))
    assert net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert text.count("batch_normalization") == 3
    with pytest.raises(TypeError, match="Sequential"):
        summarize_model(nn.Linear(2, 2), (2,))  # type: ignore[arg-type]


def test_global_normalization_uses_the_training_statistics() -> None:
    train = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    test = torch.tensor([0.5, 1.0])
    mean, std = normalize_global(train, test)
    assert (mean, std) == pytest.approx((0.5, 0.125**0.5))  # numpy's std: ddof=0
    assert float(train.mean()) == pytest.approx(0.0, abs=1e-7)
    assert float(train.std(correction=0)) == pytest.approx(1.0)
    assert test.tolist() == pytest.approx([0.0, (1.0 - mean) / std])
    with pytest.raises(ValueError, match="constant"):
        normalize_global(torch.ones(4))


def test_quick_run_trains_end_to_end_on_cifar_format_data(tmp_path: Path) -> None:
    data_dir = write_fake_cifar10(tmp_path / "cifar", n_per_batch=20, n_test=40, seed=2)
    loaded = load_data(data_dir, False)
    assert abs(float(loaded.data.train.images.mean())) < 1e-5  # normalized in load_data
    assert float(loaded.examples.min()) >= 0.0  # example images kept raw
    out = run_experiment(SPEC, out_dir=tmp_path / "runs", seeds=1, quick=True, data_dir=data_dir)
    assert [o.status for o in out] == ["done", "done"]
    run_dir = tmp_path / "runs" / "cifar-convnet" / "bn-before" / "seed-0"
    epochs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["tag"] == "epoch"]
    steps = -(-100 // SPEC.config_for("bn-before", 0, quick=True).batch_size)
    assert [r["step"] for r in epochs] == [steps, 2 * steps]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(epochs[0])
    summary = json.loads((run_dir / "artefacts" / "model_summary.json").read_text())
    assert (summary["total"], summary["trainable"], summary["non_trainable"]) == (
        553_850,
        553_626,
        224,
    )
    assert (run_dir / "artefacts" / "examples.png").read_bytes()[:4] == b"\x89PNG"
    metrics = out[0].metrics
    assert metrics["total_params"] == 553_850 and 0.0 <= metrics["test_accuracy"] <= 1.0
    results = load_results(tmp_path / "runs")["cifar-convnet"]
    assert SPEC.claims[0].check(results).holds is True


def test_without_cifar10_it_stops_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExperimentNotRunError, match="CIFAR-10"):
        run_experiment(get_experiment("cifar-convnet"), out_dir=tmp_path / "runs", data_dir=empty)
    not_run = json.loads((tmp_path / "runs" / "cifar-convnet" / "not-run.json").read_text())
    assert "CIFAR-10" in not_run["reason"] and str(empty) in not_run["reason"]
    assert not list((tmp_path / "runs" / "cifar-convnet").glob("*/seed-*"))
    results = load_results(tmp_path / "runs")["cifar-convnet"]
    verdicts = [VERDICT_TEXT[c.check(results).holds] for c in SPEC.claims]
    # The parameter counts are checked on the model builder; the accuracies are not measured.
    assert verdicts == [VERDICT_TEXT[True], VERDICT_TEXT[None], VERDICT_TEXT[None]]
