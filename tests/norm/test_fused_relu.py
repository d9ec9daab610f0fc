"""BatchNormReLU modules and fuse_bn_relu: same numbers as BN then ReLU, one fused pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models.deep_cnn import DeepCNN
from bnlab.norm.layers.bn_relu import BatchNormReLU1d, BatchNormReLU2d
from bnlab.norm.tools.fuse import fuse_bn_relu


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [True, False])
def test_module_matches_torch_bn_then_relu(fmt: torch.memory_format, training: bool) -> None:
    ours = BatchNormReLU2d(5, dtype=torch.float64, backend="fused")
    theirs = nn.BatchNorm2d(5, dtype=torch.float64)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(0.5, 1.5, 5))
            m.bias.copy_(torch.linspace(-1, 1, 5))
            m.running_mean.copy_(torch.linspace(-0.2, 0.2, 5))
    ours.train(training)
    theirs.train(training)
    x = torch.randn(6, 5, 9, 9, dtype=torch.float64).contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), torch.relu(theirs(xb))
    grad = torch.randn_like(yb)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-10, atol=1e-10)
    assert ya.is_contiguous(memory_format=fmt)


def test_non_fused_backend_still_applies_the_relu() -> None:
    layer = BatchNormReLU1d(3, backend="reference")
    y = layer(torch.randn(10, 3))
    assert (y >= 0).all() and (y > 0).any()


@pytest.mark.parametrize("norm", ["bn", "torch-bn"])
def test_fuse_bn_relu_on_the_deep_cnn(norm: str) -> None:
    torch.manual_seed(0)
    model = DeepCNN(norm=norm, num_conv_layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_bn_relu(model)
    for m in fused.modules():  # these activations are small: make "auto" not matter
        if hasattr(m, "backend"):
            m.backend = "fused"
    kinds = [type(m).__name__ for m in fused.features.modules()]
    assert kinds.count("BatchNormReLU2d") == 6 and "ReLU" not in kinds
    assert type(fused.hidden.norm).__name__ == "BatchNormReLU1d"
    assert fused.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(8, 1, 28, 28)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa), model(xb)  # training mode: batch statistics, buffers updated
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(fused.named_buffers(), model.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not any(
        torch.equal(before[k], v) for k, v in model.state_dict().items() if "running_var" in k
    )


def test_only_bn_directly_before_relu_is_fused_and_input_is_untouched() -> None:
    class Odd(bnlab.BatchNorm2d):  # a variant: must keep its own _batch_norm
        pass

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.BatchNorm2d(2),  # BN after the ReLU: left alone
        Odd(2),
        nn.ReLU(),  # after a BN subclass: left alone
        nn.BatchNorm2d(2),
        nn.Sigmoid(),  # not a ReLU
    ).eval()
    fused = fuse_bn_relu(model)
    assert [type(m).__name__ for m in fused] == [type(m).__name__ for m in model]
    assert fused is not model and fused.training is False
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fuse_bn_relu(42)  # type: ignore[arg-type]
