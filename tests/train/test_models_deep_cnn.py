"""The seed-000 network and the TF-faithful initializers (owned by the engine issue)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.errors import UnknownNameError
from bnlab.models import (
    Conv2dSame,
    DeepCNN,
    LowLevelBatchNorm,
    fans,
    glorot_uniform_,
    tf_init_,
    tf_same_padding,
    truncated_normal_,
)


@pytest.mark.parametrize(
    ("size", "stride", "expected"),
    [
        (28, 1, (1, 1)),
        (28, 2, (0, 1)),
        (7, 2, (1, 1)),
        (4, 2, (0, 1)),
        (2, 2, (0, 1)),
        (1, 2, (1, 1)),
    ],
)
def test_tf_same_padding(size: int, stride: int, expected: tuple[int, int]) -> None:
    assert tf_same_padding(size, 3, stride) == expected
    assert tf_same_padding(size, 3, stride)[0] + size + tf_same_padding(size, 3, stride)[1] >= 3


def test_conv_same_pads_after_like_tensorflow() -> None:
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF: output (0, 0) covers rows/cols 0..2 (the pad is after), sum of x[0:3, 0:3].
    y = conv(x)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0].item() == x[0, 0, :3, :3].sum().item()
    assert y[0, 0, 1, 1].item() == x[0, 0, 2:, 2:].sum().item()  # the padded row/col are 0
    assert torch.equal(conv(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2))


def test_glorot_and_truncated_normal_distributions() -> None:
    torch.manual_seed(0)
    w = torch.empty(64, 32, 3, 3)
    assert fans(w) == (288, 576)
    glorot_uniform_(w)
    limit = math.sqrt(6 / (288 + 576))
    assert w.abs().max() <= limit and w.abs().max() > 0.99 * limit
    t = truncated_normal_(torch.empty(200_000), 0.05)
    assert t.abs().max() <= 0.1
    assert t.std().item() == pytest.approx(0.05 * 0.8796, rel=0.02)  # std of N truncated at 2 sd
    with pytest.raises(UnknownNameError, match="glorot-uniform"):
        tf_init_(nn.Linear(2, 2), kernel="he")


def test_architecture_follows_the_seed() -> None:
    net = DeepCNN(norm="none")
    convs = [m for m in net.modules() if isinstance(m, Conv2dSame)]
    assert [c.out_channels for c in convs] == [4 * i for i in range(1, 20)]
    assert [c.stride[0] for c in convs] == [2 if i % 3 == 0 else 1 for i in range(1, 20)]
    assert net.flat_features == 76  # 28 -> 14 -> 7 -> 4 -> 2 -> 1 -> 1
    assert all(c.bias is not None and c.bias.eq(0).all() for c in convs)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in net.modules())


@pytest.mark.parametrize(
    ("placement", "bias", "order"),
    [
        ("bn-relu", False, ["conv", "norm", "act"]),
        ("bias-bn-relu", True, ["conv", "norm", "act"]),
        ("bias-relu-bn", True, ["conv", "act", "norm"]),
        ("relu-bn", False, ["conv", "act", "norm"]),
    ],
)
def test_placements(placement: str, bias: bool, order: list[str]) -> None:
    net = DeepCNN(norm="bn", placement=placement, num_conv_layers=3)
    block = net.features.conv2
    assert [name for name, _ in block.named_children()] == order
    assert (block.conv.bias is not None) is bias
    assert block.norm.eps == 1e-3 and block.norm.momentum == pytest.approx(0.01)
    # The dense layer is always the seed's BN version: no bias, BN, ReLU.
    assert [n for n, _ in net.hidden.named_children()] == ["dense", "norm", "act"]
    assert net.hidden.dense.bias is None


def test_lowlevel_network_uses_explicit_tensors() -> None:
    torch.manual_seed(0)
    net = DeepCNN(norm="bn", lowlevel=True, conv_init="truncated-normal")
    bns = [m for m in net.modules() if isinstance(m, LowLevelBatchNorm)]
    assert len(bns) == 20  # 19 conv layers + the dense layer
    params = dict(net.named_parameters())
    assert not any("pop_" in name for name in params)
    assert "features.conv1.norm.gamma" in params
    assert "features.conv1.norm.pop_variance" in net.state_dict()
    conv_w = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, Conv2dSame)])
    assert conv_w.abs().max() <= 0.1 and conv_w.std().item() == pytest.approx(0.044, rel=0.05)
    with pytest.raises(ValueError, match="norm='bn'"):
        DeepCNN(norm="none", lowlevel=True)


def test_lowlevel_bn_updates_population_with_tf_moments() -> None:
    torch.manual_seed(0)
    bn = LowLevelBatchNorm(3, eps=1e-3, decay=0.9)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    y = bn(x)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)  # tf.nn.moments: biased
    assert torch.allclose(bn.pop_mean, 0.1 * mean.float(), atol=1e-6)
    assert torch.allclose(bn.pop_variance, 0.9 + 0.1 * var.float(), atol=1e-6)
    expected = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-3)
    assert torch.allclose(y, expected, atol=1e-6)
    bn.eval()
    z = bn(x)
    pm, pv = bn.pop_mean.double(), bn.pop_variance.double()
    assert torch.allclose(
        z, (x - pm[None, :, None, None]) / torch.sqrt(pv[None, :, None, None] + 1e-3), atol=1e-5
    )
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(torch.zeros(2, 4))


def test_bad_names_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="bias-relu-bn"):
        DeepCNN(norm="bn", placement="after")
    with pytest.raises(UnknownNameError, match="torch-bn"):
        DeepCNN(norm="bm")
    with pytest.raises(ValueError, match="dense_units"):
        DeepCNN(dense_units=0)
