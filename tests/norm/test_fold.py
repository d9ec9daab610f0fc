"""fold_bn and fold_bn_weights: equal outputs, no mutation, refusals, every layer kind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models.deep_cnn import DeepCNN
from bnlab.norm.tools.fold import fold_bn, fold_bn_weights


def _randomize_bn(model: nn.Module) -> None:
    """Give every BN non-trivial population statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean") and m.running_mean is not None:
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c) * 0.5)
                m.running_var.copy_(torch.rand(c) + 0.5)
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(c) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(c))


def _assert_rel_close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err < rel, f"relative error {err:.2e} >= {rel:.0e}"


def test_fold_bn_weights_formula() -> None:
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    mean, var = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.1
    gamma, beta = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    nw, nb = fold_bn_weights(w, b, mean, var, 1e-3, gamma, beta)
    s = gamma / torch.sqrt(var + 1e-3)
    torch.testing.assert_close(nw, w * s.reshape(4, 1, 1, 1))
    torch.testing.assert_close(nb, (b - mean) * s + beta)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
        fold_bn_weights(w, b, torch.zeros(3), var, 1e-3)


@pytest.mark.parametrize("norm", ["bn", "torch-bn"])
def test_deep_cnn_folded_equals_eval_model(norm: str) -> None:
    model = DeepCNN(norm=norm)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_bn(model)
    remaining = [m for m in folded.modules() if isinstance(m, (nn.BatchNorm2d, bnlab.BatchNorm2d))]
    assert remaining == []  # all 19 conv BNs are folded (and the dense one)
    assert not any(isinstance(m, (nn.BatchNorm1d, bnlab.BatchNorm1d)) for m in folded.modules())
    with torch.no_grad():
        _assert_rel_close(folded(x), model(x), 1e-5)
    after = model.state_dict()  # the input model is untouched
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, (nn.BatchNorm2d, bnlab.BatchNorm2d)) for m in model.modules())


def test_refuses_training_mode_and_names_the_fix() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"call model\.eval\(\)"):
        fold_bn(model)
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match="module '1' is in training mode"):
        fold_bn(model)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fold_bn("not a model")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "layer, bn, shape",
    [
        (nn.Linear(5, 4, bias=False), bnlab.BatchNorm1d(4, affine=False), (6, 5)),
        (nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), (2, 2, 9)),
        (nn.Conv3d(2, 3, 2, bias=False), bnlab.BatchNorm3d(3), (2, 2, 4, 4, 4)),
        (nn.ConvTranspose2d(3, 4, 2, stride=2), nn.BatchNorm2d(4), (2, 3, 5, 5)),
        (nn.Conv2d(4, 4, 3, groups=2, bias=False), nn.BatchNorm2d(4, affine=False), (2, 4, 6, 6)),
    ],
)
def test_every_layer_kind(layer: nn.Module, bn: nn.Module, shape: tuple[int, ...]) -> None:
    model = nn.Sequential(layer, bn, nn.ReLU())
    _randomize_bn(model)
    model.eval()
    folded = fold_bn(model)
    assert isinstance(folded[1], nn.Identity)
    assert folded[0].bias is not None
    x = torch.randn(shape)
    with torch.no_grad():
        _assert_rel_close(folded(x), model(x), 1e-5)


def test_only_adjacent_pairs_with_population_statistics_are_folded() -> None:
    shared = nn.Conv2d(2, 2, 1)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.BatchNorm2d(2),  # after a ReLU: not foldable
        nn.Conv2d(2, 2, 1),
        nn.BatchNorm2d(2, track_running_stats=False),  # batch statistics in eval mode
        shared,
        nn.BatchNorm2d(2),  # after a layer that is used twice
        shared,
    ).eval()
    folded = fold_bn(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded) == 3
    x = torch.randn(2, 1, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
