"""Frozen batch norm: batch norm's eval output in every mode, nothing to learn, checkpoints
both ways; freeze_bn returns a new model with only the matching layers frozen.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm import get_norm
from bnlab.norm.layers.frozen import FrozenBatchNorm, freeze_bn

F64 = torch.float64


def _trained_bn(cls: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    bn = cls(3, eps=1e-3, dtype=F64)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    for _ in range(3):
        bn(torch.randn(4, 3, 5, 5, dtype=F64) * 2 + 1)
    return bn


@pytest.mark.parametrize("cls", [nn.BatchNorm2d, bnlab.BatchNorm2d])
def test_equals_batch_norm_eval_in_both_modes(cls: type[nn.Module]) -> None:
    bn = _trained_bn(cls).eval()
    frozen = FrozenBatchNorm.from_batch_norm(bn)
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    for mode in (True, False):
        torch.testing.assert_close(frozen.train(mode)(x), bn(x), rtol=1e-12, atol=1e-12)
    before = frozen.running_mean.clone()
    frozen.train()(torch.randn(8, 3, 5, 5, dtype=F64) + 100)
    assert torch.equal(frozen.running_mean, before)


def test_nothing_to_learn_but_input_gradients_flow() -> None:
    frozen = FrozenBatchNorm.from_batch_norm(_trained_bn())
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 3, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(frozen, (x,))
    (g,) = torch.autograd.grad(frozen(x).sum(), x)
    scale = frozen.weight / (frozen.running_var + frozen.eps).sqrt()
    torch.testing.assert_close(g, scale[None, :, None, None].expand_as(x))


def test_checkpoint_loads_both_ways_and_any_rank() -> None:
    bn = _trained_bn()
    frozen = FrozenBatchNorm(3, eps=1e-3, dtype=F64)
    frozen.load_state_dict(bn.state_dict())
    back = nn.BatchNorm2d(3, eps=1e-3, dtype=F64)
    back.load_state_dict(frozen.state_dict())
    for key, value in bn.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert frozen(torch.randn(4, 3, dtype=F64)).shape == (4, 3)  # (N, C) too
    with pytest.raises(ValueError, match=r"\(N, 3, \*\)"):
        frozen(torch.randn(4, 2, dtype=F64))


def _net() -> nn.Sequential:
    def block(c: int) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv=nn.Conv2d(c, c, 1), bn=bnlab.BatchNorm2d(c)))

    return nn.Sequential(OrderedDict(layer1=block(2), layer2=block(2), head=nn.BatchNorm2d(2)))


def test_freeze_bn_returns_a_new_model_and_freezes_matches_only() -> None:
    net = _net()
    net(torch.randn(4, 2, 3, 3))
    x = torch.randn(3, 2, 3, 3)
    expected = net.eval()(x)
    net.train()
    frozen = freeze_bn(net, "layer2.*")
    assert isinstance(frozen.layer2.bn, FrozenBatchNorm)
    assert type(frozen.layer1.bn) is bnlab.BatchNorm2d and type(frozen.head) is nn.BatchNorm2d
    assert type(net.layer2.bn) is bnlab.BatchNorm2d  # the input model is untouched
    assert frozen.training and frozen.layer2.bn.training  # modes kept
    torch.testing.assert_close(frozen.eval()(x), expected)
    assert frozen.layer1.conv.weight is not net.layer1.conv.weight  # a copy
    every = freeze_bn(net, ["layer*", "head"])
    assert sum(isinstance(m, FrozenBatchNorm) for m in every.modules()) == 3
    assert isinstance(freeze_bn(nn.BatchNorm1d(2)), FrozenBatchNorm)


def test_freeze_bn_refuses_a_pattern_that_matches_nothing() -> None:
    with pytest.raises(ValueError, match=r"'layer1.bn', 'layer2.bn', 'head'"):
        freeze_bn(_net(), "layer3.*")
    with pytest.raises(ValueError, match="track_running_stats"):
        freeze_bn(nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False)))


def test_registry_name() -> None:
    layer = get_norm("frozen", 5, spatial_dims=2, eps=1e-3, decay=0.99)
    assert isinstance(layer, FrozenBatchNorm) and layer.eps == 1e-3
    assert "frozen" in bnlab.available_norms()
