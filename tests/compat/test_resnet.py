"""A ResNet-18-shaped model, converted from torch's batch norm to bnlab's, through the tools a
PyTorch user reaches for: state_dict both ways, fold_bn, torch's SyncBatchNorm
converter, torch.ao's fuse_modules, an optimizer built before conversion."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models.resnet import ResNet18
from bnlab.norm import convert_batchnorm, fold_bn


def _bns(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def _trained(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, then eval mode."""
    with torch.no_grad():
        for bn in _bns(model).values():
            bn.weight.uniform_(0.5, 1.5)  # type: ignore[operator]
            bn.bias.uniform_(-0.5, 0.5)  # type: ignore[operator]
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    return model.eval()


def test_conversion_keeps_state_parameters_and_outputs() -> None:
    torch_model = _trained(ResNet18(width=8))
    model = convert_batchnorm(torch_model)
    bns = _bns(model)
    assert len(bns) == 20 and all(type(m) is bnlab.BatchNorm2d for m in bns.values())
    assert all(isinstance(m, nn.BatchNorm2d) for m in bns.values())
    # The same Parameter objects: an optimizer built on the torch model trains this one.
    assert {id(p) for p in model.parameters()} == {id(p) for p in torch_model.parameters()}
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), torch_model(x), rtol=1e-5, atol=1e-6)
    assert type(torch_model.bn1) is nn.BatchNorm2d  # the input keeps its layers


def test_state_dict_loads_both_ways_strictly() -> None:
    torch_model = _trained(ResNet18(width=8))
    ours = convert_batchnorm(ResNet18(width=8))
    ours.load_state_dict(torch_model.state_dict(), strict=True)
    back = ResNet18(width=8)
    back.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), back.eval()
    torch.testing.assert_close(ours(x), torch_model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(back(x), torch_model(x), rtol=1e-5, atol=1e-6)


def test_fold_bn_folds_all_twenty_layers() -> None:
    model = convert_batchnorm(_trained(ResNet18(width=8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be left: no FoldWarning
        folded, report = fold_bn(model, return_report=True)
    assert len(report.done) == 20 and not report.left, str(report)
    assert not _bns(folded) and _bns(model)  # the input model is not changed
    x = torch.randn(2, 3, 64, 64)
    y, y_folded = model(x), folded(x)
    assert float((y_folded - y).abs().max() / y.abs().max()) < 1e-5


def test_fold_bn_says_what_it_left_and_why() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), bnlab.BatchNorm2d(4)).eval()
    with pytest.warns(bnlab.norm.FoldWarning, match="left  2: not the only consumer"):
        folded, report = fold_bn(model, return_report=True)
    assert report.done == [] and list(report.left) == ["2"]
    assert isinstance(folded[2], bnlab.BatchNorm2d)


def test_torch_sync_batchnorm_converter_sees_bnlab_layers() -> None:
    model = convert_batchnorm(ResNet18(width=8))
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == 20


def test_torch_ao_fuse_modules_fuses_conv_bn_relu() -> None:
    model = convert_batchnorm(_trained(ResNet18(width=8)))
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    groups = [["conv1", "bn1", "relu"]]
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            groups += [[f"{prefix}.conv1", f"{prefix}.bn1"], [f"{prefix}.conv2", f"{prefix}.bn2"]]
    fused = torch.ao.quantization.fuse_modules(model, groups)
    assert not isinstance(fused.layer1[0].bn1, nn.modules.batchnorm._BatchNorm)
    torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)


def test_weight_decay_filters_by_isinstance() -> None:
    model = convert_batchnorm(ResNet18(width=8))
    no_decay = [
        p
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False)
    ]
    assert len(no_decay) == 40


def test_convert_sync_batchnorm_keeps_parameters_for_the_optimizer() -> None:
    model = convert_batchnorm(ResNet18(width=8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    synced = bnlab.convert_sync_batchnorm(model)
    before = synced.bn1.weight.detach().clone()
    synced.train()(torch.randn(4, 3, 64, 64)).square().mean().backward()
    opt.step()
    assert not torch.equal(synced.bn1.weight.detach(), before)


def test_num_features_accepts_numpy_integers() -> None:
    np = pytest.importorskip("numpy")
    bn = bnlab.BatchNorm2d(np.int64(4))
    assert bn.num_features == 4 and type(bn.num_features) is int
    with pytest.raises(TypeError, match="num_features must be an int"):
        bnlab.BatchNorm2d(4.0)  # type: ignore[arg-type]
