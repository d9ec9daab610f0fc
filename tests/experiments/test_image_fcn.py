"""The image-fcn experiment (seed 003): channels-last low-level batch norm, the 2-layer FCN,
the denoising run end to end at a small size, its artefacts and claims."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bnlab.experiments import get_experiment, run_experiment
from bnlab.experiments.image_fcn import SPEC, ImageFCNConfig, load_images, psnr, square
from bnlab.models.fcn import ChannelsLastBatchNorm, ImageFCN
from bnlab.report import VERDICT_TEXT, load_results
from bnlab.train import read_metrics


def test_registered_and_configured() -> None:
    assert get_experiment("image-fcn") is SPEC
    config = SPEC.config_for("bn", 0)
    assert (config.image_size, config.test_image) == (512, "astronaut")
    assert config.test_image not in config.train_images
    with pytest.raises(ValueError, match="batch_size"):
        ImageFCNConfig(batch_size=4)


def test_channels_last_norm_reduces_over_n_h_w_and_updates_population_each_call() -> None:
    bn = ChannelsLastBatchNorm(3, eps=1e-5, decay=0.9).double()
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64) * torch.tensor([1.0, 4.0, 9.0]) + 3
    y = bn(x)
    assert y.shape == x.shape
    mean = x.mean(dim=(0, 1, 2))
    var = x.var(dim=(0, 1, 2), correction=0)
    assert torch.allclose(y, (x - mean) / torch.sqrt(var + 1e-5), atol=1e-10)
    assert torch.allclose(bn.pop_mean, 0.1 * mean)
    m = 2 * 5 * 6  # the update uses the unbiased variance, m / (m - 1) times the biased one
    assert torch.allclose(bn.pop_variance, 0.9 + 0.1 * var * m / (m - 1))
    bn(x)
    assert torch.allclose(bn.pop_mean, 0.19 * mean)  # every training call moves it
    bn.eval()
    expected = (x - bn.pop_mean) / torch.sqrt(bn.pop_variance + 1e-5)
    assert torch.allclose(bn(x), expected)
    assert [n for n, _ in bn.named_parameters()] == ["gamma", "beta"]
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        bn(torch.zeros(2, 3, 4, 4, dtype=torch.float64))


def test_fcn_keeps_the_image_shape_and_is_a_residual_of_its_input() -> None:
    torch.manual_seed(0)
    net = ImageFCN(3, 8, residual=True, output_norm=True)
    x = torch.rand(2, 16, 16, 3)
    assert net(x).shape == (2, 16, 16, 3)
    with torch.no_grad():
        net.conv2.weight.zero_()
        net.conv2.bias.zero_()
        net.bn2.gamma.zero_()
    assert torch.allclose(net(x), x)  # zero correction: the output is the input
    names = [n for n, _ in net.named_parameters()]
    assert "bn1.gamma" in names and not any("pop_" in n for n in names)


def test_square_and_psnr() -> None:
    image = torch.rand(3, 30, 50)
    out = square(image, 30)
    assert torch.equal(out, image[:, :, 10:40].permute(1, 2, 0))  # a center crop, no resize
    assert square(image, 12).shape == (12, 12, 3)
    target = torch.rand(8, 8, 3)
    noisy = target + 0.05
    mse = float(F.mse_loss(noisy.clamp(0, 1), target))
    assert psnr(noisy, target) == pytest.approx(-10 * torch.log10(torch.tensor(mse)).item())
    sets = load_images(dataclasses.replace(ImageFCNConfig(), image_size=32))
    assert sets.train.shape == (3, 32, 32, 3) and sets.test.shape == (1, 32, 32, 3)


def test_quick_run_writes_the_output_image_and_population_records(tmp_path: Path) -> None:
    out = run_experiment(SPEC, out_dir=tmp_path, seeds=1, quick=True)
    assert out[0].status == "done"
    run_dir = tmp_path / "image-fcn" / "bn" / "seed-0"
    config = SPEC.config_for("bn", 0, quick=True)
    with Image.open(run_dir / "artefacts" / "output.png") as image:
        assert (image.size, image.mode) == ((config.image_size, config.image_size), "RGB")
    records = read_metrics(run_dir / "metrics.jsonl")
    population = [r for r in records if r["tag"] == "population"]
    assert len(population) == config.epochs
    assert len([k for k in population[0] if k.startswith("bn1.pop_mean_")]) == 16
    # The statistics moved from their initial 0 / 1 and keep moving each epoch.
    assert population[0]["bn1.pop_variance_0"] != 1.0
    assert population[-1]["bn1.pop_mean_0"] != population[0]["bn1.pop_mean_0"]
    text = (run_dir / "artefacts" / "population_stats.txt").read_text()
    assert text.count("bn1.pop_mean") == config.epochs
    params = json.loads((run_dir / "artefacts" / "parameters.json").read_text())
    assert not params["population_in_optimizer"]
    assert set(params["non_trainable"]) == {"bn1.pop_mean", "bn1.pop_variance"}
    metrics = out[0].metrics
    assert metrics["non_trainable_params"] == 32 and metrics["population_in_optimizer"] == 0
    verdicts = [c.check(load_results(tmp_path)["image-fcn"]).holds for c in SPEC.claims]
    assert verdicts[:2] == [True, True]  # parameters and per-epoch population statistics
    # The output-image claim asks for the configured size; quick runs are small.
    assert verdicts[2] is True
    assert VERDICT_TEXT[verdicts[0]]
