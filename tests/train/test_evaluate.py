"""Inference-mode evaluation: chunking does not change results, modes are restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.train import eval_mode, evaluate, predict, predict_one_at_a_time


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    net.train()
    for _ in range(3):  # give the running statistics non-default values
        net(torch.randn(32, 5) * 3 + 1)
    return net


def test_chunked_evaluation_equals_one_batch() -> None:
    net = _net()
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    whole = evaluate(net, x, y, nn.functional.cross_entropy, batch_size=50)
    chunked = evaluate(net, x, y, nn.functional.cross_entropy, batch_size=7)
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert chunked["accuracy"] == whole["accuracy"]
    with eval_mode(net), torch.no_grad():
        logits = net(x)
    assert whole["accuracy"] == (logits.argmax(1) == y).sum().item() / 50
    assert torch.allclose(predict(net, x, batch_size=4), logits, atol=1e-6)
    assert net.training  # restored


def test_one_at_a_time_uses_population_statistics() -> None:
    net = _net()
    x = torch.randn(20, 5)
    assert torch.equal(predict_one_at_a_time(net, x), predict(net, x).argmax(1))
    assert net.training and net[1].training


def test_eval_mode_restores_mixed_flags_even_on_error() -> None:
    net = _net()
    net[1].eval()  # a frozen BN inside a training model keeps its flag
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError
    assert net.training and not net[1].training


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        evaluate(
            _net(), torch.randn(4, 5), torch.zeros(3, dtype=torch.long), nn.functional.cross_entropy
        )
    with pytest.raises(ValueError, match="empty"):
        evaluate(
            _net(), torch.randn(0, 5), torch.zeros(0, dtype=torch.long), nn.functional.cross_entropy
        )
