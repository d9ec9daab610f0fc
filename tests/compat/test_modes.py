"""The edges of a drop-in: inference mode, the non-finite guard inside a compiled graph,
eps=0 on every backend, scripting the variants, and torch's FX fuser."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.layers.ghost import GhostBatchNorm2d
from bnlab.norm.layers.safe import NonFiniteBatchWarning
from bnlab.norm.ops import dispatch

SMALL, FUSED = (8, 4, 5, 5), (16, 16, 64, 64)


@pytest.mark.parametrize("shape", [SMALL, FUSED], ids=["small", "fused"])
def test_training_forward_in_inference_mode_does_not_poison_later_steps(shape: tuple) -> None:
    ours, theirs = bnlab.BatchNorm2d(shape[1]), nn.BatchNorm2d(shape[1])
    x = torch.randn(shape)
    with torch.inference_mode():
        ours(x), theirs(x)
    for _ in range(2):  # normal training afterwards, as torch allows
        ours(x).sum().backward()
        theirs(x).sum().backward()
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3


@pytest.mark.parametrize("shape", [SMALL, FUSED], ids=["small", "fused"])
def test_guard_inside_a_compiled_graph_keeps_statistics_and_counts(shape: tuple) -> None:
    bn = bnlab.BatchNorm2d(shape[1])
    torch._dynamo.reset()
    step = torch.compile(bn, fullgraph=True)  # fullgraph: a host sync would fail here
    x = torch.randn(shape)
    step(x)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    bad = x.clone()
    bad[0, 1, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteBatchWarning)  # no warning inside the graph
        step(bad)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == 1 and bn.refused_batches == 1
    with pytest.warns(NonFiniteBatchWarning, match="refused 1 non-finite batch"):
        bn.eval()  # the lazy warning
    step(x)  # eval: the running statistics normalize and stay finite
    assert torch.isfinite(bn.running_mean).all()


@pytest.mark.parametrize("backend", dispatch.available_backends())
def test_eps_zero_is_refused_in_training_and_allowed_in_eval_by_every_backend(
    backend: str,
) -> None:
    x = torch.randn(8, 3, 4, 4)
    with pytest.raises(ValueError, match="eps must be > 0 in training mode"):
        bnlab.batch_norm(x, None, None, training=True, eps=0.0, backend=backend)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = bnlab.batch_norm(x, rm, rv, training=False, eps=0.0, backend=backend)
    torch.testing.assert_close(y, x)


def test_script_a_bn_layer_and_refuse_a_variant_clearly() -> None:
    layer = bnlab.BatchNorm2d(4).eval()
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
    with pytest.raises(TypeError, match="has no TorchScript form"):
        torch.jit.script(GhostBatchNorm2d(4, virtual_batch_size=2))


def test_torch_fusion_utilities_accept_bnlab_layers() -> None:
    # torch.nn.utils.fuse_conv_bn_eval is what torch's FX and quantization fusers call.
    # (torch.fx.experimental.optimization.fuse matches exact types, so it skips any
    # subclass of nn.BatchNorm2d; bnlab.fold_bn covers that case: tests/compat/test_resnet.py.)
    conv, bn = nn.Conv2d(3, 4, 3).eval(), bnlab.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    fused = torch.nn.utils.fuse_conv_bn_eval(conv, bn)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-4, atol=1e-5)
