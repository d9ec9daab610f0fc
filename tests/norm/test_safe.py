"""Safe statistics: a NaN/Inf batch leaves every running statistic unchanged and is reported
(layer and step); each degenerate-batch policy (raise, population, skip) does what it says.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm import get_norm
from bnlab.norm.layers.ghost import GhostBatchNorm1d
from bnlab.norm.layers.renorm import BatchRenorm1d
from bnlab.norm.layers.safe import (
    DegenerateBatchWarning,
    NonFiniteBatchWarning,
    label_layers,
    refusals,
)
from bnlab.norm.ops import dispatch


def _state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", dispatch.available_backends())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_batch_is_refused_and_reported(backend: str, bad: float) -> None:
    bn = bnlab.BatchNorm2d(3, backend=backend)
    bn(torch.randn(4, 3, 2, 2))
    before = _state(bn)
    x = torch.randn(4, 3, 2, 2)
    x[1, 2, 0, 1] = bad
    with pytest.warns(NonFiniteBatchWarning, match=r"BatchNorm2d\(3\).*at step 2"):
        y = bn(x)
    assert _same(_state(bn), before)  # running_mean, running_var, num_batches_tracked
    assert bn.refused_batches == 1 and bn.refused_steps == [2]
    assert not torch.isfinite(y[:, 2]).all()  # the output is not silently cleaned
    assert torch.isfinite(y[:, :2]).all()
    bn(torch.randn(4, 3, 2, 2))  # the next good batch is step 2 again, and counts
    assert int(bn.num_batches_tracked) == 2 and torch.isfinite(bn.running_var).all()


def test_every_layer_of_a_model_is_guarded_and_named() -> None:
    net = nn.Sequential(
        OrderedDict(
            fc=nn.Linear(4, 8, bias=False),
            bn1=bnlab.BatchNorm1d(8, momentum=None),  # cumulative average
            ghost=GhostBatchNorm1d(8, virtual_batch_size=4),
            renorm=BatchRenorm1d(8),
        )
    )
    label_layers(net)
    net(torch.randn(16, 4))
    before = _state(net)
    x = torch.randn(16, 4)
    x[3, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = net(x)
    assert _same(_state(net), before)
    assert torch.isnan(y).any()
    names = [str(w.message).split()[2] for w in caught if w.category is NonFiniteBatchWarning]
    assert names == ["'bn1'", "'ghost'", "'renorm'"]
    assert refusals(net) == {
        "bn1": {"count": 1, "steps": [2]},
        "ghost": {"count": 1, "steps": [2]},
        "renorm": {"count": 1, "steps": [2]},
    }


def test_huge_finite_statistics_are_not_mistaken_for_overflow() -> None:
    # Running variance near float32's limit: a sum of the buffer would overflow to inf
    # and refuse a good batch; the guard's check must not.
    bn = bnlab.BatchNorm1d(128, momentum=1.0)
    x = torch.randn(8, 128) * 2e18
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteBatchWarning)
        bn(x)
    assert bn.refused_batches == 0 and float(bn.running_var.max()) > 1e35


def test_guard_follows_the_layer_to_another_dtype() -> None:
    bn = bnlab.BatchNorm1d(3)
    bn(torch.randn(5, 3))
    bn = bn.double()
    bn(torch.randn(5, 3, dtype=torch.float64))
    before = _state(bn)
    x = torch.randn(5, 3, dtype=torch.float64)
    x[0, 0] = float("nan")
    with pytest.warns(NonFiniteBatchWarning):
        bn(x)
    assert _same(_state(bn), before)


def test_guard_off_lets_nan_in_like_torch() -> None:
    bn = bnlab.BatchNorm1d(2, guard_nonfinite=False)
    x = torch.randn(6, 2)
    x[0, 1] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        bn(x)
    assert torch.isnan(bn.running_mean[1]) and bn.refused_batches == 0
    assert "guard_nonfinite=False" in repr(bn)


def test_eval_mode_is_not_guarded_or_changed() -> None:
    bn = bnlab.BatchNorm1d(2).eval()
    x = torch.full((3, 2), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(bn(x)).all()
    assert bn.refused_batches == 0


# -- degenerate batches ------------------------------------------------------------------


def _trained(policy: str, **kw: object) -> bnlab.BatchNorm1d:
    bn = bnlab.BatchNorm1d(3, degenerate=policy, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn(torch.randn(8, 3) * 2 + 1)
    return bn


def test_policy_raise_is_torchs_behaviour() -> None:
    bn = _trained("raise")
    before = _state(bn)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(torch.randn(1, 3))
    assert _same(_state(bn), before)
    # An empty batch: empty output, counted, statistics unchanged (as torch.nn does).
    theirs = nn.BatchNorm1d(3)
    assert bn(torch.randn(0, 3)).shape == theirs(torch.randn(0, 3)).shape == (0, 3)
    assert int(bn.num_batches_tracked) == 2 and int(theirs.num_batches_tracked) == 1


def test_policy_population_normalizes_with_running_statistics() -> None:
    bn = _trained("population")
    before = _state(bn)
    x = torch.randn(1, 3)
    with pytest.warns(DegenerateBatchWarning, match="'population'"):
        y = bn(x)
    expected = bnlab.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5)
    torch.testing.assert_close(y, expected)
    assert _same(_state(bn), before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per layer
        bn(torch.randn(1, 3))
        assert bn(torch.randn(0, 3)).shape == (0, 3)
    assert _same(_state(bn), before)  # not even the empty batch is counted
    y8 = bn(torch.randn(8, 3))  # a normal batch: plain batch norm
    assert int(bn.num_batches_tracked) == 2 and y8.std(0).min() > 0.5
    with pytest.raises(ValueError, match="track_running_stats=False"):
        bnlab.BatchNorm1d(3, degenerate="population", track_running_stats=False)(torch.ones(1, 3))


def test_policy_skip_uses_batch_statistics_without_update() -> None:
    bn = _trained("skip")
    before = _state(bn)
    x = torch.randn(1, 3, requires_grad=True)
    with pytest.warns(DegenerateBatchWarning, match="'skip'"):
        y = bn(x)
    torch.testing.assert_close(y, bn.bias.detach()[None])  # x - mean(x) = 0: output = bias
    assert _same(_state(bn), before)
    y.sum().backward()
    assert torch.equal(bn.bias.grad, torch.ones(3)) and torch.equal(bn.weight.grad, torch.zeros(3))
    conv = bnlab.BatchNorm2d(2, degenerate="skip")
    with pytest.warns(DegenerateBatchWarning):
        assert conv(torch.randn(1, 2, 1, 1)).abs().max() == 0  # bias 0
    assert int(conv.num_batches_tracked) == 0
    assert bn(torch.randn(0, 3)).shape == (0, 3)
    assert _same(_state(bn), before)


def test_policy_by_name_and_checkpoints_unchanged() -> None:
    layer = get_norm("bn", 4, spatial_dims=2, degenerate="skip")
    assert layer.degenerate == "skip" and "degenerate='skip'" in repr(layer)
    assert set(layer.state_dict()) == set(nn.BatchNorm2d(4).state_dict())
    nn.BatchNorm2d(4).load_state_dict(layer.state_dict())
    with pytest.raises(ValueError, match="'raise', 'population', 'skip'"):
        bnlab.BatchNorm1d(2, degenerate="ignore")
