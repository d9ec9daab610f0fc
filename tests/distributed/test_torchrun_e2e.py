"""Slow end-to-end checks of data-parallel training: ``torchrun -m bnlab run deep-cnn
--sync-bn`` on synthetic MNIST (one run directory, world size recorded, the global loss of
one process, a clear error for a world size that does not divide the batch), and the
real deep-cnn network in float64 trained by 2 processes like 1."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnlab.data import write_fake_mnist
from bnlab.distributed import spawn
from bnlab.experiments.deep_cnn import DeepCNNConfig, build_model, sigmoid_cross_entropy
from bnlab.report.results import load_results
from bnlab.train import read_metrics
from bnlab.train.distributed import DataParallel

pytestmark = pytest.mark.slow


def _bnlab(*argv: str, nproc: int | None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "bnlab"]
    if nproc is not None:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "bnlab",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, *argv, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["tag"] == "train"]


def test_torchrun_sync_bn_run_of_deep_cnn(tmp_path: Path) -> None:
    mnist = write_fake_mnist(tmp_path / "mnist", n_train=240, n_test=40, seed=1)
    # NCHW and plain Adam, where the float32 tolerances below were measured: channels-last
    # convolutions round differently (3.7e-6 at step 1); the float64 test below covers the
    # math in the default layout.
    common = (
        *("run", "deep-cnn", "--quick", "--variant", "bn", "--data-dir", str(mnist)),
        *("--set", "channels_last=false", "--set", "fused_adam=false"),
    )
    two = _bnlab(*common, "--sync-bn", "--out", str(tmp_path / "dp"), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    run = tmp_path / "dp" / "deep-cnn" / "bn@2proc-syncbn" / "seed-0"
    config = json.loads((run / "config.json").read_text())
    assert config["data_parallel"] == {"world_size": 2, "sync_bn": True}
    env = json.loads((run / "env.json").read_text())
    assert env["data_parallel"] == {"world_size": 2, "backend": "gloo", "sync_bn": True}
    assert two.stdout.count("Final metrics") == 1  # rank 0 alone reports
    assert "bn@2proc-syncbn" in two.stdout  # the summary table shows the run

    one = _bnlab(*common, "--threads", "1", "--out", str(tmp_path / "single"), nproc=None)
    assert one.returncode == 0, one.stderr[-3000:]
    single = _train_losses(tmp_path / "single" / "deep-cnn" / "bn" / "seed-0")
    parallel = _train_losses(run)
    assert len(single) == len(parallel) == 12
    # Same weights, same global batch: the first loss agrees to float32 rounding. After
    # one Adam step it agrees less well: Adam's first update is about lr * sign(grad), so
    # a gradient near zero that rounds differently moves a weight by a whole step
    # (measured: 3e-7 at step 1, 1.05e-5 at step 2). Later steps drift apart: float32
    # rounding amplified through 21 layers; the float64 test below shows the drift is
    # rounding, not a difference in the math.
    assert abs(single[0] - parallel[0]) <= 2e-6 * abs(single[0]), (single[:2], parallel[:2])
    assert abs(single[1] - parallel[1]) <= 1e-4 * abs(single[1]), (single[:2], parallel[:2])

    # A one-process run of the same variant lands beside it, and the report's loader
    # sees the two as separate variants of the experiment.
    again = _bnlab(*common, "--threads", "1", "--out", str(tmp_path / "dp"), nproc=None)
    assert again.returncode == 0, again.stderr[-3000:]
    results = load_results(tmp_path / "dp")["deep-cnn"]
    assert results.variants == ["bn", "bn@2proc-syncbn"]
    assert len(results.complete("bn")) == len(results.complete("bn@2proc-syncbn")) == 1


def test_a_world_size_that_does_not_divide_the_batch_stops_every_rank(tmp_path: Path) -> None:
    mnist = write_fake_mnist(tmp_path / "mnist", n_train=240, n_test=40, seed=1)
    common = ("run", "deep-cnn", "--quick", "--variant", "bn", "--data-dir", str(mnist))
    three = _bnlab(*common, "--sync-bn", "--out", str(tmp_path / "dp"), nproc=3, timeout=300)
    assert three.returncode != 0
    assert "the global batch of 32 does not split evenly over 3 processes" in three.stderr


def _deep_cnn_worker(rank: int, world: int) -> tuple[float, float]:
    config = dataclasses.replace(DeepCNNConfig(), norm="bn")
    gen = torch.Generator().manual_seed(0)
    data = [
        (
            torch.rand(8, 1, 28, 28, generator=gen, dtype=torch.float64),
            torch.randint(0, 10, (8,), generator=gen),
        )
        for _ in range(4)
    ]

    def train(dp: DataParallel) -> tuple[dict[str, torch.Tensor], list[float]]:
        torch.manual_seed(0)
        model = build_model(config).double()
        train_model = dp.wrap(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
        losses = []
        for x, y in data:
            b = 8 // dp.world_size
            xs, ys = x[dp.rank * b : (dp.rank + 1) * b], y[dp.rank * b : (dp.rank + 1) * b]
            loss = sigmoid_cross_entropy(train_model(xs), ys)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(dp.mean_across_ranks(loss.detach())))
        return model.state_dict(), losses

    ref_state, ref_losses = train(DataParallel())
    state, losses = train(DataParallel(rank, world, 0, "gloo", sync_bn=True))
    param_err = max(float((state[k].double() - ref_state[k].double()).abs().max()) for k in state)
    loss_err = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
    return param_err, loss_err


def test_deep_cnn_in_float64_trains_on_two_processes_like_one() -> None:
    for param_err, loss_err in spawn(_deep_cnn_worker, 2, timeout_s=120, deadline_s=600):
        assert param_err <= 1e-10 and loss_err <= 1e-10, (param_err, loss_err)
