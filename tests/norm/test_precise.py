"""Precise statistics: the exact pooled mean/variance whatever the split into batches, equal
to the population statistics computed directly; cleanup in ``finally`` when the body raises.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab.norm.tools.precise import PooledMoments, PreciseStats, precise_bn

F64 = torch.float64
SPLIT = [2, 2, 4, 8, 16, 32, 64]  # 128 examples in uneven batches


def _net(bn: nn.Module) -> nn.Sequential:
    return nn.Sequential(bn, nn.ReLU(), nn.Dropout(0.5)).to(F64)


@pytest.mark.parametrize("cls", [bnlab.BatchNorm2d, nn.BatchNorm2d])
def test_independent_of_the_split_and_equal_to_the_population(cls: type[nn.Module]) -> None:
    data = (
        torch.randn(128, 3, 4, 4, dtype=F64)
        * torch.tensor([1.0, 5.0, 0.1], dtype=F64)[:, None, None]
        + torch.tensor([0.0, -3.0, 1e3], dtype=F64)[:, None, None]
    )
    population_mean = data.mean((0, 2, 3))
    population_var = data.transpose(0, 1).reshape(3, -1).var(1, unbiased=True)
    results = []
    for sizes in (SPLIT, [128], [1, 127], list(reversed(SPLIT))):
        net = _net(cls(3))
        precise_bn(net, data.split(sizes), num_batches=len(sizes))
        results.append((net[0].running_mean.clone(), net[0].running_var.clone()))
    for mean, var in results:
        torch.testing.assert_close(mean, population_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, population_var, rtol=1e-12, atol=1e-12)
    # An EMA over the same batches depends on their order and sizes, and is not this.
    ema = _net(cls(3))
    for batch in data.split(SPLIT):
        ema(batch)
    assert float((ema[0].running_mean - population_mean).abs().max()) > 1.0


def test_only_the_first_k_batches_count_and_state_is_restored() -> None:
    net = _net(bnlab.BatchNorm1d(2, momentum=0.3))
    net.train()
    net[2].eval()  # a mixed-mode model: every flag must come back as it was
    net[0].num_batches_tracked.fill_(7)
    data = torch.randn(40, 2, dtype=F64)
    moments = precise_bn(net, [(b, None) for b in data.split(10)], num_batches=2)
    torch.testing.assert_close(net[0].running_mean, data[:20].mean(0))
    assert moments["0"].count == 20
    assert net[0].momentum == 0.3 and int(net[0].num_batches_tracked) == 7
    assert [m.training for m in net] == [True, True, False]
    assert not net[0]._forward_pre_hooks


def test_everything_restored_when_the_body_raises() -> None:
    net = _net(bnlab.BatchNorm1d(2, momentum=None))
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield torch.randn(8, 2, dtype=F64) + 50
        raise RuntimeError("data loader died")

    with pytest.raises(RuntimeError, match="data loader died"):
        precise_bn(net, batches())
    assert not net[0]._forward_pre_hooks
    assert net[0].momentum is None
    assert not any(m.training for m in net.modules())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.is_grad_enabled()


def test_context_manager_form_and_skipped_layers() -> None:
    net = nn.ModuleDict({"used": nn.BatchNorm1d(2), "unused": nn.BatchNorm1d(2)})
    data = torch.randn(30, 2)
    with pytest.warns(RuntimeWarning, match="unused"), PreciseStats(net) as est:
        for batch in data.split(7):
            net["used"](batch)
    assert est.skipped == ["unused"] and list(est.layers) == ["used"]
    torch.testing.assert_close(net["used"].running_mean, data.mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(net["unused"].running_mean, torch.zeros(2))


def test_pooled_moments_match_numpy_style_formula() -> None:
    x = torch.randn(50, 4, dtype=F64) * 3 + 7
    p = PooledMoments()
    for part in x.split([1, 3, 5, 41]):
        p.add(part)
    assert p.count == 50
    torch.testing.assert_close(p.unbiased_var(), x.var(0, unbiased=True))
    with pytest.raises(ValueError, match="at least 2"):
        PooledMoments().unbiased_var()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no batch-norm layer"):
        precise_bn(nn.Linear(2, 2), [torch.randn(4, 2)])
    with pytest.raises(TypeError, match="split"):
        precise_bn(_net(nn.BatchNorm1d(2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="num_batches"):
        precise_bn(_net(nn.BatchNorm1d(2)), [torch.randn(4, 2)], num_batches=0)
    with pytest.warns(RuntimeWarning, match="asked for 5"):
        precise_bn(_net(nn.BatchNorm1d(2)), [torch.randn(4, 2, dtype=F64)], num_batches=5)
