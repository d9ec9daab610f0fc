"""The smallest cases behind failures the model zoo found, each compared with what torch's own
batch norm does on the same input: an in-place ReLU after bnlab's output, a dynamic-batch
export at a fused size, timm's BatchNormAct2d through fold_bn, a batch-norm subclass with
its own forward through the converters, an empty float64 batch, and fuse_modules_qat."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import bnlab
from bnlab.bench import zoo

REASON = zoo.zoo_available()


def test_in_place_relu_after_bnlab_batch_norm_backpropagates_as_after_torchs() -> None:
    # 64x64x56x56 in training: the size where "auto" runs the fused kernel.
    x = torch.randn(64, 64, 56, 56)
    grads = {}
    for name, bn in (("torch", nn.BatchNorm2d(64)), ("bnlab", bnlab.BatchNorm2d(64))):
        model = nn.Sequential(bn, nn.ReLU(inplace=True))
        xi = x.clone().requires_grad_(True)
        model(xi).sum().backward()
        assert xi.grad is not None and bn.weight.grad is not None
        grads[name] = (xi.grad, bn.weight.grad, bn.running_var.clone())
    for got, expected, what in zip(
        grads["bnlab"], grads["torch"], ("dx", "dweight", "var"), strict=True
    ):
        err = zoo.relative_error(got, expected)
        assert err < 1e-5, f"{what} differs from torch's by {err:.3g} (relative)"


@pytest.mark.parametrize("op", ["relu_", "add_", "mul_", "clamp_"])
def test_in_place_ops_on_bnlab_outputs_behave_as_on_torchs(op: str) -> None:
    x, direction = torch.randn(64, 64, 56, 56), torch.randn(64, 64, 56, 56)
    apply: dict[str, Callable[[Tensor], Tensor]] = {
        "relu_": lambda y: y.relu_(),
        "add_": lambda y: y.add_(1.0),
        "mul_": lambda y: y.mul_(2.0),
        "clamp_": lambda y: y.clamp_(-1.0, 1.0),
    }
    results = {}
    for name, bn in (("torch", nn.BatchNorm2d(64)), ("bnlab", bnlab.BatchNorm2d(64))):
        xi = x.clone().requires_grad_(True)
        y = apply[op](bn(xi))
        # Not a loss of y's mean and spread alone: batch norm's input gradient would vanish.
        (y * direction).sum().backward()
        assert xi.grad is not None
        results[name] = (y.detach(), xi.grad)
    for got, expected in zip(results["bnlab"], results["torch"], strict=True):
        assert zoo.relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_export_with_a_dynamic_batch_at_a_fused_size(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), bnlab.BatchNorm2d(64))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train(mode == "train")
    eager = copy.deepcopy(model)
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        model, (torch.randn(16, 3, 224, 224),), dynamic_shapes=({0: batch},)
    )
    exported = program.module()
    for n in (4, 32):
        x = torch.randn(n, 3, 224, 224)
        with torch.no_grad():
            y, expected = exported(x), eager(x)
        err = zoo.relative_error(y, expected)
        assert err < 1e-5, f"batch {n}: the exported program differs by {err:.3g} (relative)"
    if mode == "train":
        stats = {k: v for k, v in exported.state_dict().items() if "running" in k}
        for key, value in stats.items():
            expected = eager.state_dict()[key]
            assert zoo.relative_error(value, expected) < 1e-5, key


@pytest.mark.skipif(bool(REASON), reason=REASON or "the zoo is available")
def test_fold_bn_keeps_the_activation_of_timms_batchnormact2d() -> None:
    entry = zoo.zoo_model("timm-mobilenetv3_small_100")
    model = zoo.warm_up(entry.build(), [entry.input(10), entry.input(11)])
    x = entry.input(2)
    with torch.no_grad():
        expected = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a left layer is fine; a changed output is not
            folded = bnlab.fold_bn(model)
        y = folded(x)
    err = zoo.relative_error(y, expected)
    assert err < 1e-4, f"fold_bn changed the output by {err:.3g} (relative)"


class PlusOneBatchNorm2d(nn.BatchNorm2d):
    """A user's batch-norm subclass that computes more than batch norm."""

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input) + 1.0


def _subclass_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 8, 3, bias=False),
            plus_one_bn=PlusOneBatchNorm2d(8),
            relu=nn.ReLU(),
        )
    )
    with torch.no_grad():
        model.plus_one_bn.running_mean.uniform_(-0.5, 0.5)
        model.plus_one_bn.running_var.uniform_(0.5, 2.0)
    return model


TOOLS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "convert_batchnorm": bnlab.convert_batchnorm,
    "convert_batchnorm-fused": lambda m: bnlab.convert_batchnorm(m, backend="fused"),
    "fold_bn": bnlab.fold_bn,
    "convert_sync_batchnorm": bnlab.convert_sync_batchnorm,
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_a_batch_norm_subclass_with_its_own_forward_keeps_its_output(tool: str, mode: str) -> None:
    if tool == "fold_bn" and mode == "train":
        pytest.skip("fold_bn takes eval-mode models only")
    model = _subclass_model().train(mode == "train")
    reference = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rewritten = TOOLS[tool](model)
    expected, y = reference(x), rewritten(x)
    err = zoo.relative_error(y, expected)
    assert err < 1e-6, f"{tool} changed the subclass's output by {err:.3g} (relative)"
    layer = rewritten.get_submodule("plus_one_bn")
    if type(layer) is PlusOneBatchNorm2d:  # left as it was: a warning must name it
        messages = [str(w.message) for w in caught]
        assert any("plus_one_bn" in m for m in messages), messages


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_empty_float64_batch_through_a_float32_layer_is_empty_as_with_torch(mode: str) -> None:
    x = torch.empty(0, 3, 4, 4, dtype=torch.float64)
    expected = nn.BatchNorm2d(3).train(mode == "train")(x)
    y = bnlab.BatchNorm2d(3).train(mode == "train")(x)
    assert y.shape == expected.shape and y.dtype == expected.dtype


def test_fuse_modules_qat_fuses_conv_bnlab_bn_relu_in_training() -> None:
    fused = {}
    x = torch.randn(4, 3, 8, 8)
    outputs = {}
    for name, bn in (("torch", nn.BatchNorm2d(8)), ("bnlab", bnlab.BatchNorm2d(8))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), bn, nn.ReLU()).train()
        expected = copy.deepcopy(model)(x)
        fused[name] = torch.ao.quantization.fuse_modules_qat(model, [["0", "1", "2"]])
        outputs[name] = (fused[name](x), expected)
    assert type(fused["bnlab"][0]) is type(fused["torch"][0])
    y, expected = outputs["bnlab"]
    assert zoo.relative_error(y, expected) < 1e-6
