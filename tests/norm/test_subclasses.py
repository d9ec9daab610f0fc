"""Batch-norm subclasses through bnlab's rewrite tools: a layer that adds behaviour is
handled (its activation kept) or left with a warning that names it, never changed silently.

timm's ``BatchNormAct2d`` itself is covered by the model-zoo suite (tests/zoo); here the
same shape is bnlab's ``BatchNormAct2d``, and a user's subclass overriding ``forward``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import bnlab
from bnlab.norm import (
    BatchNormAct2d,
    RewriteWarning,
    SyncBatchNormAct,
    anatomy,
    convert_batchnorm,
    convert_sync_batchnorm,
    fold_bn,
    freeze_bn,
    resolve_backend,
)


class Shifted(nn.BatchNorm2d):
    """A user's subclass that adds behaviour: batch norm, then + 1."""

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input) + 1.0


class Quiet(nn.BatchNorm2d):
    """A subclass that adds nothing to ``forward`` (plain batch norm)."""


def _net(norm: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), norm, nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)  # type: ignore[operator]
        norm.bias.uniform_(-0.5, 0.5)  # type: ignore[operator]
        norm.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
        norm.running_var.uniform_(0.5, 2.0)  # type: ignore[operator]
    return net


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_anatomy_knows_plain_act_and_unknown_layers() -> None:
    assert anatomy(nn.BatchNorm2d(3)) is not None and anatomy(nn.BatchNorm2d(3)).tail is None  # type: ignore[union-attr]
    assert anatomy(Quiet(3)).tail is None  # type: ignore[union-attr]
    assert anatomy(bnlab.BatchNorm2d(3)).tail is None  # type: ignore[union-attr]
    assert anatomy(bnlab.SyncBatchNorm(3)).tail is None  # type: ignore[union-attr]
    silu = nn.SiLU()
    assert anatomy(BatchNormAct2d(3, act=silu)).tail is silu  # type: ignore[union-attr]
    assert anatomy(Shifted(3)) is None
    assert anatomy(nn.Conv2d(3, 3, 1)) is None


def test_fold_keeps_the_activation_of_a_batch_norm_act_layer() -> None:
    net = _net(BatchNormAct2d(4, act=nn.SiLU())).eval()
    folded, report = fold_bn(net, return_report=True)
    assert type(folded[1]) is nn.SiLU and report.done == ["0 <- 1 (its SiLU kept)"]
    torch.testing.assert_close(folded(X), net(X), rtol=1e-5, atol=1e-6)


def test_fold_leaves_an_unknown_subclass_and_names_it() -> None:
    net = _net(Shifted(4)).eval()
    with pytest.warns(RewriteWarning, match=r"left  1: .*Shifted overrides forward"):
        folded = fold_bn(net)
    assert type(folded[1]) is Shifted
    torch.testing.assert_close(folded(X), net(X))


def test_convert_batchnorm_leaves_an_unknown_subclass_and_names_it() -> None:
    net = _net(Shifted(4))
    with pytest.warns(RewriteWarning, match=r"convert_batchnorm: 1 batch-norm .*\n  left  1: "):
        converted = convert_batchnorm(net)
    assert type(converted[1]) is Shifted
    torch.testing.assert_close(converted(X), net(X))


def test_convert_batchnorm_converts_torch_layers_without_a_word() -> None:
    net = _net(nn.BatchNorm2d(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = convert_batchnorm(net)
    assert type(converted[1]) is bnlab.BatchNorm2d


def test_convert_sync_batchnorm_keeps_the_activation_and_leaves_unknown_layers() -> None:
    net = _net(BatchNormAct2d(4, act=nn.Hardswish()))
    synced = convert_sync_batchnorm(net)
    assert type(synced[1]) is SyncBatchNormAct and type(synced[1].act) is nn.Hardswish
    assert synced[1].weight is net[1].weight  # the same Parameter objects, as torch
    assert sorted(synced.state_dict()) == sorted(net.state_dict())
    torch.testing.assert_close(synced(X), net(X))  # one process: plain batch norm, then act
    shifted = _net(Shifted(4))
    with pytest.warns(RewriteWarning, match="Shifted overrides forward"):
        left = convert_sync_batchnorm(shifted)
    assert type(left[1]) is Shifted
    torch.testing.assert_close(left(X), shifted(X))


def test_freeze_keeps_the_activation_and_leaves_unknown_layers() -> None:
    net = _net(BatchNormAct2d(4, act=nn.ReLU())).eval()
    frozen = freeze_bn(net)
    assert sorted(frozen.state_dict()) == sorted(net.state_dict())
    torch.testing.assert_close(frozen(X), net(X))
    shifted = _net(Shifted(4)).eval()
    with pytest.warns(RewriteWarning, match="Shifted overrides forward"):
        left = freeze_bn(shifted)
    torch.testing.assert_close(left(X), shifted(X))


def test_batch_norm_act_scripts_and_traces_with_its_activation() -> None:
    layer = BatchNormAct2d(4, act=nn.ReLU()).eval()
    with torch.no_grad():
        layer.bias.fill_(-0.5)
    x = torch.randn(2, 4, 3, 3)
    expected = layer(x)
    assert (expected == 0).any()  # the ReLU did something
    torch.testing.assert_close(torch.jit.script(layer)(x), expected)
    graph = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), layer))
    torch.testing.assert_close(graph(x), expected)


def test_in_place_activation_after_the_fused_kernel_trains() -> None:
    # torchvision's ResNet stem: BN then ReLU(inplace=True), at a size where "auto" runs
    # the fused kernel; the output must be a tensor of its own, as torch's is.
    x = torch.randn(16, 64, 112, 112, requires_grad=True)  # 12.8M values, 51 MB
    ours = nn.Sequential(bnlab.BatchNorm2d(64), nn.ReLU(inplace=True))
    theirs = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    assert resolve_backend("auto", x, True) == "fused"
    y = ours(x)
    y.sum().backward()
    grad, x.grad = x.grad, None
    theirs(x).sum().backward()
    torch.testing.assert_close(y, theirs(x.detach()), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-4)


def test_empty_batch_with_other_buffer_dtypes_is_accepted_as_torch_does() -> None:
    x = torch.randn(0, 3, 4, 4, dtype=torch.float64)
    for mode in (True, False):
        y = bnlab.BatchNorm2d(3).train(mode)(x)
        assert y.shape == x.shape and y.dtype == torch.float64


def test_fuse_modules_qat_takes_bnlab_batch_norm() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4), nn.ReLU()).train()
    fused = torch.ao.quantization.fuse_modules_qat(net, [["0", "1", "2"]])
    assert type(fused[0]).__name__ == "ConvBnReLU2d"
    torch.testing.assert_close(fused(X), net(X))
