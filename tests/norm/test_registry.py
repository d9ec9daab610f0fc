"""The two registries of the core: norm layers by name (get_norm) and batch-norm backends
(dispatch): lookups, errors listing the valid names, and registering new entries.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bnlab.errors import BnlabError, UnknownNameError
from bnlab.norm.layers import registry
from bnlab.norm.layers.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.layers.registry import available_norms, get_norm, register_norm
from bnlab.norm.ops import dispatch
from bnlab.norm.ops.functional import batch_norm

INPUT_SHAPE = {0: (4, 6), 1: (4, 6, 5), 2: (4, 6, 3, 5), 3: (2, 6, 3, 2, 3)}


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("bn", (BatchNorm1d, BatchNorm1d, BatchNorm2d, BatchNorm3d)),
        ("torch-bn", (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
        ("none", (nn.Identity,) * 4),
    ],
)
@pytest.mark.parametrize("spatial_dims", [0, 1, 2, 3])
def test_initial_names_build_the_right_layer(
    name: str, classes: tuple[type[nn.Module], ...], spatial_dims: int
) -> None:
    layer = get_norm(name, 6, spatial_dims=spatial_dims)
    assert type(layer) is classes[spatial_dims]
    x = torch.randn(INPUT_SHAPE[spatial_dims])
    assert layer(x).shape == x.shape  # accepts the documented input rank


def test_available_norms_has_descriptions() -> None:
    norms = available_norms()
    assert {"bn", "torch-bn", "none"} <= set(norms)
    assert all(isinstance(d, str) and d for d in norms.values())
    norms["bn"] = "mutated"  # a copy: callers cannot corrupt the registry
    assert available_norms()["bn"] != "mutated"


def test_kwargs_reach_the_layer_and_decay_works_for_both_bns() -> None:
    bn = get_norm("bn", 8, eps=1e-3, decay=0.99, affine=False)
    tbn = get_norm("torch-bn", 8, eps=1e-3, decay=0.99)
    assert isinstance(bn, BatchNorm2d) and isinstance(tbn, nn.BatchNorm2d)
    assert bn.eps == tbn.eps == 1e-3 and not bn.affine
    assert bn.momentum == pytest.approx(0.01) and tbn.momentum == pytest.approx(0.01)
    # One rule for both (core.resolve_momentum): a momentum other than the default
    # together with decay is ambiguous and refused; the default is not "given".
    for name in ("bn", "torch-bn"):
        with pytest.raises(ValueError, match="either momentum"):
            get_norm(name, 8, momentum=0.5, decay=0.99)
        assert get_norm(name, 8, momentum=0.1, decay=0.99).momentum == pytest.approx(0.01)
    assert isinstance(get_norm("none", 8, eps=1e-3, decay=0.99), nn.Identity)


def test_unknown_norm_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get_norm("bm", 4)
    assert isinstance(info.value, BnlabError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "unknown norm 'bm'" in message
    for name in ("bn", "torch-bn", "none"):
        assert name in message


def test_bad_spatial_dims() -> None:
    with pytest.raises(ValueError, match=r"spatial_dims must be 0 .* got 4"):
        get_norm("bn", 4, spatial_dims=4)


def test_register_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_NORMS", dict(registry._NORMS))  # undone after the test

    def group_norm(num_features: int, spatial_dims: int, **kwargs: object) -> nn.Module:
        return nn.GroupNorm(2, num_features)

    register_norm("gn-test", group_norm, "group norm, 2 groups")
    assert available_norms()["gn-test"] == "group norm, 2 groups"
    assert isinstance(get_norm("gn-test", 4), nn.GroupNorm)
    with pytest.raises(ValueError, match="already registered"):
        register_norm("gn-test", group_norm, "again")
    register_norm("gn-test", lambda c, d, **k: nn.Identity(), "replaced", replace=True)
    assert isinstance(get_norm("gn-test", 4), nn.Identity)
    with pytest.raises(ValueError, match="description"):
        register_norm("x", group_norm, "")


# -- backends ---------------------------------------------------------------------------------


def test_backends_available_and_auto_resolves_to_one() -> None:
    names = dispatch.available_backends()
    assert "native" in names and "reference" in names and "auto" not in names
    x = torch.randn(4, 3)
    assert dispatch.resolve_backend("auto", x, True) in names
    assert dispatch.resolve_backend("reference", x, False) == "reference"


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown backend 'fused-x'; expected one of: auto"):
        batch_norm(torch.randn(4, 3), None, None, training=True, backend="fused-x")
    with pytest.raises(UnknownNameError, match="reference"):
        dispatch.resolve_backend("nope", torch.randn(4, 3), True)


def test_register_backend_routes_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_BACKENDS", dict(dispatch._BACKENDS))
    calls: list[bool] = []

    def spy(x: Tensor, rm: Tensor | None, rv: Tensor | None, *args: object) -> Tensor:
        calls.append(bool(args[2]))  # the training flag
        return torch.zeros_like(x)

    dispatch.register_backend("spy", spy)
    assert "spy" in dispatch.available_backends()
    y = batch_norm(torch.randn(4, 3), None, None, training=True, backend="spy")
    assert calls == [True] and torch.equal(y, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="already registered"):
        dispatch.register_backend("spy", spy)
    with pytest.raises(ValueError, match="other than 'auto'"):
        dispatch.register_backend("auto", spy)
    # Validation runs before any backend: bad input never reaches it.
    with pytest.raises(ValueError, match="single value"):
        batch_norm(torch.randn(1, 3), None, None, training=True, backend="spy")
    assert calls == [True]
