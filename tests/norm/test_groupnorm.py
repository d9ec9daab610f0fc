"""Group, layer and instance norm on the core: parity with torch's functional versions,
group norm with one group equals layer norm over (C, H, W), gradcheck, registry names.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.norm import get_norm
from bnlab.norm.layers.group import (
    GROUP_NORM_BACKENDS,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    default_num_groups,
)

F64 = torch.float64
BACKENDS = pytest.mark.parametrize("backend", GROUP_NORM_BACKENDS)


def _affine(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.rand_like(layer.weight) + 0.5)
        layer.bias.copy_(torch.randn_like(layer.bias))


@BACKENDS
def test_one_group_equals_layer_norm_over_chw(backend: str) -> None:
    x = torch.randn(4, 6, 5, 3, dtype=F64) * 3 + 2
    gn = GroupNorm(1, 6, eps=1e-5, affine=False, backend=backend)
    expected = F.layer_norm(x, x.shape[1:], eps=1e-5)
    torch.testing.assert_close(gn(x), expected, rtol=1e-12, atol=1e-12)
    # With a per-channel affine, layer norm with the same affine broadcast over (H, W).
    ln = LayerNorm(6, dtype=F64, backend=backend)
    _affine(ln)
    w = ln.weight.detach()[:, None, None].expand(6, 5, 3)
    b = ln.bias.detach()[:, None, None].expand(6, 5, 3)
    torch.testing.assert_close(ln(x), F.layer_norm(x, x.shape[1:], w, b), rtol=1e-12, atol=1e-12)


@BACKENDS
@pytest.mark.parametrize("groups,shape", [(2, (3, 4, 5, 5)), (3, (2, 6, 7)), (4, (5, 8))])
def test_group_norm_matches_torch(backend: str, groups: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    ours = GroupNorm(groups, shape[1], eps=1e-3, dtype=F64, backend=backend)
    _affine(ours)
    y = ours(x)
    ref = F.group_norm(x, groups, ours.weight, ours.bias, eps=1e-3)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    ref_grads = torch.autograd.grad(ref, (x, ours.weight, ours.bias), g)
    for a, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@BACKENDS
def test_instance_norm_matches_torch_and_ignores_mode(backend: str) -> None:
    x = torch.randn(3, 4, 6, 6, dtype=F64)
    layer = InstanceNorm(4, affine=False, backend=backend)
    torch.testing.assert_close(layer(x), F.instance_norm(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(layer.train()(x), layer.eval()(x))
    assert list(layer.buffers()) == []


@pytest.mark.parametrize(
    "layer",
    [
        GroupNorm(2, 4, backend="core"),
        LayerNorm(4, backend="core"),
        InstanceNorm(4),
        GroupNorm(2, 4),
    ],
)
def test_gradcheck(layer: nn.Module) -> None:
    layer = layer.to(F64)
    _affine(layer)
    x = torch.randn(3, 4, 3, 2, dtype=F64, requires_grad=True)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(fn, (x, layer.weight, layer.bias))


def test_registry_names_and_defaults() -> None:
    gn = get_norm("gn", 64, eps=1e-3, decay=0.99)  # batch-norm options are ignored
    assert isinstance(gn, GroupNorm) and gn.num_groups == 32 and gn.eps == 1e-3
    assert get_norm("gn", 12, num_groups=3).num_groups == 3
    assert isinstance(get_norm("ln", 8, spatial_dims=0), LayerNorm)
    assert get_norm("in", 8).num_groups == 8
    assert default_num_groups(48) == 24 and default_num_groups(7) == 7


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="divide"):
        GroupNorm(3, 8)
    with pytest.raises(ValueError, match="native, core"):
        GroupNorm(2, 8, backend="fused")
    with pytest.raises(ValueError, match=r"\(N, 8, \*\)"):
        GroupNorm(2, 8)(torch.randn(2, 4, 3))
    for backend in GROUP_NORM_BACKENDS:
        with pytest.raises(ValueError, match="one value per group"):
            InstanceNorm(4, backend=backend)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        LayerNorm(2)(torch.ones(2, 2, dtype=torch.long))
