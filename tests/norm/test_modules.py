"""bnlab's BatchNorm1d/2d/3d as drop-ins for torch.nn's: a broad parity matrix on every
backend, state_dict round trips, the decay argument, and each bad-input error.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import bnlab
from bnlab.errors import UnknownNameError
from bnlab.norm.layers.modules import BATCH_NORM_TYPES, BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.norm.ops import dispatch

BACKENDS = dispatch.available_backends()
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
TORCH_CLASS = {
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    BatchNorm3d: nn.BatchNorm3d,
}

CL, CL3 = torch.channels_last, torch.channels_last_3d
# (bnlab class, input shape, memory format, eps): ranks, C=1, odd sizes, channels-last.
SHAPES = [
    (BatchNorm1d, (5, 3), None, 1e-5),
    (BatchNorm1d, (4, 1), None, 1e-3),
    (BatchNorm1d, (3, 4, 7), None, 1e-5),
    (BatchNorm2d, (2, 3, 5, 7), None, 1e-5),
    (BatchNorm2d, (3, 4, 3, 5), CL, 1e-3),
    (BatchNorm2d, (2, 5, 1, 3), CL, 1e-5),
    (BatchNorm2d, (4, 1, 3, 3), None, 1e-5),
    (BatchNorm3d, (2, 3, 3, 2, 5), None, 1e-3),
    (BatchNorm3d, (2, 4, 3, 3, 3), CL3, 1e-5),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run this file's tiny tensors on one intra-op thread, restored afterwards.

    On a shared 2-core machine, a second OpenMP thread waits at every parallel region
    for a descheduled peer: measured 80 s vs 8 s for the norm tests under load.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str) -> None:
    """Relative closeness at the project tolerance, scaled by the tensor's magnitude.

    A plain ``allclose`` (torch.testing.assert_close costs more than the layers here).
    """
    tol = TOL[dtype]
    a, e = actual.detach(), expected.detach()
    scale = max(1.0, float(e.abs().max()))
    assert a.shape == e.shape and a.dtype == e.dtype, f"{what}: {a.shape}/{a.dtype} vs {e.shape}"
    if not torch.allclose(a, e, rtol=tol, atol=tol * scale, equal_nan=True):
        err = float((a - e).abs().max())
        raise AssertionError(f"{what}: max abs error {err:.3e} > {tol:g} (scale {scale:.3g})")


def make_pair(
    cls: type[nn.Module], c: int, dtype: torch.dtype, backend: str, **kwargs: object
) -> tuple[nn.Module, nn.Module]:
    ours = cls(c, dtype=dtype, backend=backend, **kwargs)
    theirs = TORCH_CLASS[cls](c, dtype=dtype, **kwargs)
    if ours.weight is not None:  # non-trivial affine parameters, the same in both
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            theirs.weight.copy_(ours.weight)
            if ours.bias is not None:
                ours.bias.normal_()
                theirs.bias.copy_(ours.bias)
    return ours, theirs


# (momentum, affine, track_running_stats): momentum matters only when tracking, and the
# affine switch is independent of it, so each is varied with the others at defaults.
STATS_CASES = [
    (0.1, True, True),
    (None, True, True),
    (0.0, True, True),
    (0.1, False, True),
    (0.1, True, False),
    (0.1, False, False),
]


def _shape_id(case: tuple) -> str:
    cls, shape, fmt, eps = case
    layout = {None: "contig", CL: "cl", CL3: "cl3d"}[fmt]
    return f"{cls.__name__}-{'x'.join(map(str, shape))}-{layout}-eps{eps:g}"


@pytest.mark.parametrize(
    "stats_case", STATS_CASES, ids=lambda c: f"mom{c[0]}-affine{c[1]}-track{c[2]}"
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape_case", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_parity_with_torch_nn(
    backend: str, shape_case: tuple, dtype: torch.dtype, stats_case: tuple
) -> None:
    cls, shape, fmt, eps = shape_case
    momentum, affine, track = stats_case
    ours, theirs = make_pair(
        cls,
        shape[1],
        dtype,
        backend,
        eps=eps,
        momentum=momentum,
        affine=affine,
        track_running_stats=track,
    )
    # Three training steps, then one in eval mode: outputs and all gradients every time.
    for step in range(4):
        if step == 3:
            ours.eval()
            theirs.eval()
        x = torch.randn(shape, dtype=dtype) * 1.5 + 0.3
        if fmt is not None:
            x = x.to(memory_format=fmt)
        grad_out = torch.randn(shape, dtype=dtype)
        results = []
        for module in (ours, theirs):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            y = module(xi)
            (y * grad_out).sum().backward()
            results.append((y, xi.grad, module.weight, module.bias))
        (y, dx, w, b), (ty, tdx, tw, tb) = results
        assert_close(y, ty, dtype, f"output at step {step}")
        assert y.dtype == dtype and y.shape == shape
        if fmt is not None:
            assert y.is_contiguous(memory_format=fmt), "output lost the input's memory format"
        assert dx is not None and tdx is not None
        assert_close(dx, tdx, dtype, f"input grad at step {step}")
        if affine:
            assert_close(w.grad, tw.grad, dtype, f"weight grad at step {step}")
            assert_close(b.grad, tb.grad, dtype, f"bias grad at step {step}")
    if track:
        assert_close(ours.running_mean, theirs.running_mean, dtype, "running_mean")
        assert_close(ours.running_var, theirs.running_var, dtype, "running_var")
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    else:
        assert ours.running_mean is None and ours.num_batches_tracked is None


def test_same_parameters_buffers_and_state_dict_keys_as_torch() -> None:
    for affine in (True, False):
        for track in (True, False):
            ours = BatchNorm2d(4, affine=affine, track_running_stats=track)
            theirs = nn.BatchNorm2d(4, affine=affine, track_running_stats=track)
            assert [n for n, _ in ours.named_parameters()] == [
                n for n, _ in theirs.named_parameters()
            ]
            assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
            assert list(ours.state_dict()) == list(theirs.state_dict())
            for key, value in theirs.state_dict().items():
                assert torch.equal(ours.state_dict()[key], value), key
                assert ours.state_dict()[key].dtype == value.dtype, key
    assert repr(BatchNorm2d(4, eps=1e-3)) == repr(nn.BatchNorm2d(4, eps=1e-3))
    assert "backend='reference'" in repr(BatchNorm1d(4, backend="reference"))


def test_device_and_dtype_arguments() -> None:
    bn = BatchNorm3d(3, device="cpu", dtype=torch.float64)
    assert (
        bn.weight is not None and bn.running_var is not None and bn.num_batches_tracked is not None
    )
    assert bn.weight.dtype == bn.running_var.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long
    assert bn.weight.device.type == "cpu"


def test_state_dict_round_trip_with_torch_batchnorm2d() -> None:
    theirs = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    for _ in range(3):
        theirs(torch.randn(4, 3, 5, 5) * 2 + 1)
    ours = BatchNorm2d(3, momentum=0.3)
    ours.load_state_dict(theirs.state_dict())
    back = nn.BatchNorm2d(3, momentum=0.3)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 5, 5)
    for module in (theirs, ours, back):
        module.eval()
    assert torch.equal(ours(x), theirs(x)) and torch.equal(back(x), theirs(x))
    for module in (theirs, ours, back):
        module.train()
    ys = [m(x) for m in (theirs, ours, back)]
    assert torch.equal(ys[1], ys[0]) and torch.equal(ys[2], ys[0])
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(ours.state_dict()[key], theirs.state_dict()[key]), key
        assert torch.equal(back.state_dict()[key], theirs.state_dict()[key]), key


def test_checkpoint_without_batch_counter_loads() -> None:
    # A version-1 checkpoint (before num_batches_tracked existed) still loads.
    state = OrderedDict(
        weight=torch.ones(2),
        bias=torch.zeros(2),
        running_mean=torch.ones(2),
        running_var=torch.ones(2),
    )
    state._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    bn = BatchNorm1d(2)
    bn.load_state_dict(state)
    assert torch.equal(bn.running_mean, torch.ones(2))
    assert int(bn.num_batches_tracked) == 0


def test_reset_running_stats_and_reset_parameters() -> None:
    bn = BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(1.0)
    bn(torch.randn(8, 3) + 4)
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean.abs().min() > 0.1
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(
        bn.running_var, torch.ones(3)
    )
    assert int(bn.num_batches_tracked) == 0
    assert torch.equal(bn.weight, torch.full((3,), 2.0))  # parameters untouched
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))


def test_momentum_none_is_the_cumulative_average() -> None:
    bn = BatchNorm1d(2, momentum=None, dtype=torch.float64)
    batches = [torch.randn(6, 2, dtype=torch.float64) for _ in range(4)]
    for x in batches:
        bn(x)
    mean_of_means = torch.stack([x.mean(0) for x in batches]).mean(0)
    mean_of_vars = torch.stack([x.var(0) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean_of_means)
    torch.testing.assert_close(bn.running_var, mean_of_vars)


def test_tracking_switched_off_after_construction_matches_torch() -> None:
    x = torch.randn(6, 3)
    ours, theirs = BatchNorm1d(3), nn.BatchNorm1d(3)
    ours.track_running_stats = theirs.track_running_stats = False
    torch.testing.assert_close(ours(x), theirs(x))
    assert torch.equal(ours.running_mean, theirs.running_mean)  # not updated in training
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))  # buffers exist: eval uses them


# -- the decay argument ----------------------------------------------------------------------


def test_decay_sets_momentum_and_matches_torch_momentum() -> None:
    ours = BatchNorm2d(3, eps=1e-3, decay=0.99)
    theirs = nn.BatchNorm2d(3, eps=1e-3, momentum=0.01)
    assert ours.momentum == pytest.approx(0.01, abs=1e-15)
    for _ in range(3):
        x = torch.randn(4, 3, 3, 3) + 2
        ours(x)
        theirs(x)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-6, atol=1e-7)


def test_decay_and_momentum_together_are_refused() -> None:
    with pytest.raises(ValueError, match=r"either momentum .* or decay"):
        BatchNorm2d(3, momentum=0.01, decay=0.99)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        BatchNorm2d(3, decay=99.0)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bad_shape", "expected_text"),
    [
        (BatchNorm1d, (2, 3, 4, 5), r"2-D \(N, C\) or 3-D \(N, C, L\)"),
        (BatchNorm1d, (3,), r"2-D \(N, C\) or 3-D \(N, C, L\)"),
        (BatchNorm2d, (2, 3, 4), r"4-D \(N, C, H, W\)"),
        (BatchNorm3d, (2, 3, 4, 4), r"5-D \(N, C, D, H, W\)"),
    ],
)
def test_wrong_rank_names_expected_and_received(
    cls: type[nn.Module], bad_shape: tuple[int, ...], expected_text: str
) -> None:
    received = str(bad_shape).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"{expected_text} input; got .*{received}"):
        cls(3)(torch.randn(bad_shape))


def test_wrong_channel_count_names_expected_and_received() -> None:
    with pytest.raises(ValueError, match=r"3 channels.*\(4, 3, 6, 6\); got shape \(4, 5, 6, 6\)"):
        BatchNorm2d(3)(torch.randn(4, 5, 6, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_value_per_channel_while_training(backend: str) -> None:
    bn = BatchNorm2d(3, backend=backend)
    with pytest.raises(ValueError, match=r"single value is undefined.*eval mode.*larger batch"):
        bn(torch.randn(1, 3, 1, 1))
    assert int(bn.num_batches_tracked) == 0  # the refused batch was not counted
    bn.eval()
    assert bn(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # population statistics work


def test_non_float_input_and_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_features must be >= 1; got 0"):
        BatchNorm1d(0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\] or None"):
        BatchNorm1d(3, momentum=-0.5)
    with pytest.raises(UnknownNameError, match="unknown backend 'fast'; expected one of: auto"):
        BatchNorm1d(3, backend="fast")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
def test_empty_batch_matches_torch(backend: str, shape: tuple[int, ...]) -> None:
    ours, theirs = BatchNorm2d(3, backend=backend), nn.BatchNorm2d(3)
    for m in (ours, theirs):
        with torch.no_grad():
            m.running_mean.fill_(2.0)
            m.running_var.fill_(3.0)
    outputs = []
    for m in (ours, theirs):
        x = torch.randn(shape, requires_grad=True)
        y = m(x)
        y.sum().backward()
        outputs.append(y)
    assert outputs[0].shape == outputs[1].shape == shape
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key  # incl. num_batches_tracked
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
    assert torch.equal(ours.bias.grad, theirs.bias.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_input_float32_module(backend: str, half: torch.dtype) -> None:
    ours, theirs = BatchNorm2d(3, backend=backend), nn.BatchNorm2d(3)
    x = (torch.randn(4, 3, 5, 5) * 3 + 1).to(half)
    y, ty = ours(x), theirs(x)
    assert y.dtype == half and ours.running_mean.dtype == torch.float32
    tol = 1e-2 if half == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), ty.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_propagates_like_torch(backend: str) -> None:
    x = torch.randn(4, 3, 2, 2)
    x[0, 2, 1, 1] = math.nan
    # guard_nonfinite=False: torch's behaviour (the default guard is tested in test_safe.py)
    ours = BatchNorm2d(3, backend=backend, guard_nonfinite=False)
    theirs = nn.BatchNorm2d(3)
    y, ty = ours(x), theirs(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ty)) and torch.isnan(y[:, 2]).all()
    assert torch.equal(torch.isnan(ours.running_mean), torch.isnan(theirs.running_mean))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_offset_module_reference_is_robust(backend: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = (1e4 + 1e-2 * torch.randn(32, 2, 4, 4, generator=g, dtype=torch.float64)).float()
    xd = x.double()
    exact = (xd - xd.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        xd.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    err = (BatchNorm2d(2, backend=backend)(x).double() - exact).abs().max().item()
    if backend == "native":
        # torch's own kernel is not robust here (documented in docs/norm.md); pin it so
        # a change (either way) is noticed.
        assert err > 1e-3
    else:
        assert err < 1e-3, f"{backend}: error {err:.2e}"


def test_top_level_exports_and_batch_norm_types() -> None:
    for name in bnlab.__all__:
        assert getattr(bnlab, name) is not None, name
    assert bnlab.BatchNorm2d is BatchNorm2d
    assert isinstance(bnlab.BatchNorm1d(2), BATCH_NORM_TYPES)
    assert isinstance(nn.BatchNorm3d(2), BATCH_NORM_TYPES)
    assert not isinstance(nn.LayerNorm(2), BATCH_NORM_TYPES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_affine_without_bias_matches_torch(backend: str) -> None:
    ours, theirs = make_pair(BatchNorm2d, 3, torch.float64, backend, bias=False)
    assert ours.bias is None and theirs.bias is None and ours.weight is not None
    assert [n for n, _ in ours.named_parameters()] == ["weight"]
    assert repr(ours).startswith(repr(theirs)[:-1])  # plus ", backend=..."
    x = torch.randn(4, 3, 3, 5, dtype=torch.float64)
    g = torch.randn_like(x)
    (ours(x) * g).sum().backward()
    (theirs(x) * g).sum().backward()
    assert_close(ours(x), theirs(x), torch.float64, "output")
    assert_close(ours.weight.grad, theirs.weight.grad, torch.float64, "weight grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_module_half_input(backend: str, half: torch.dtype) -> None:
    ours, theirs = BatchNorm1d(4, dtype=half, backend=backend), nn.BatchNorm1d(4, dtype=half)
    x = (torch.randn(16, 4, 3) + 2).to(half)
    y, ty = ours(x), theirs(x)
    assert y.dtype == half and ours.running_var.dtype == half
    tol = 1e-2 if half == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), ty.float(), rtol=tol, atol=tol)
    rm, trm = ours.running_mean.float(), theirs.running_mean.float()
    torch.testing.assert_close(rm, trm, rtol=tol, atol=tol)


def test_import_bnlab_does_not_load_torch() -> None:
    # The CLI imports bnlab; `bnlab --help` must not pay for torch (re-exports are lazy).
    code = "import sys, bnlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
