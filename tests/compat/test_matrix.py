"""bnlab's batch norm through every way PyTorch users compile, export, trace and transform a
model: {small, fused-size} x {train, eval} x {NCHW, channels-last}, on a model with a
residual connection. Every artifact runs on a NEW input (not the one it was made with) and
must match eager bnlab (float32: 1e-4 relative), running statistics included in training.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import bnlab
from bnlab.norm.layers.modules import as_torch_batch_norm
from bnlab.norm.ops import dispatch

RTOL = 1e-4


class ResidualNet(nn.Module):
    """BN on the input, then a residual block: conv -> BN -> relu -> conv -> BN, + input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn0 = bnlab.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = bnlab.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = bnlab.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn0(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


# Shapes on each side of the "auto" rule (bnlab.norm.ops.dispatch): training engages the fused
# kernel from 1M values (512K channels-last; under torch.compile channels-last from 1M
# and contiguous never). "auto" leaves inference and compiled contiguous training to
# torch's kernel, so the fused cases ask for the kernel by name: every path meets it.
SHAPES = {
    ("small", "train"): (4, 8, 6, 6),
    ("small", "eval"): (4, 8, 6, 6),
    ("fused", "train"): (8, 16, 128, 256),
    ("fused", "eval"): (8, 16, 256, 256),
}
CASES = [
    (size, mode, layout)
    for size in ("small", "fused")
    for mode in ("train", "eval")
    for layout in ("nchw", "channels_last")
]
IDS = ["-".join(case) for case in CASES]


@dataclass
class Case:
    size: str
    mode: str
    layout: str

    @property
    def training(self) -> bool:
        return self.mode == "train"

    @property
    def backend(self) -> str:
        return "fused" if self.size == "fused" else "auto"

    def model(self) -> ResidualNet:
        """The same model every call: seeded weights, non-trivial statistics."""
        shape = SHAPES[self.size, self.mode]
        torch.manual_seed(0)
        model = ResidualNet(shape[1])
        with torch.no_grad():
            for bn in (model.bn0, model.bn1, model.bn2):
                bn.backend = self.backend
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
        if self.layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        return model.train(self.training)

    def input(self, seed: int) -> Tensor:
        shape = SHAPES[self.size, self.mode]
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> Case:
    c = Case(*request.param)
    expected = "fused" if c.size == "fused" else "native"
    assert dispatch.resolve_backend(c.backend, c.input(0), c.training) == expected
    return c


def _stats(module: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in module.state_dict().items() if "running" in k or "tracked" in k}


def _assert_matches(
    case: Case,
    make: Callable[[nn.Module, Tensor], Callable[[Tensor], Tensor]],
    *,
    runs_on_make: bool,
    state: Callable[[nn.Module, Callable[[Tensor], Tensor]], dict[str, Tensor]] | None = None,
) -> None:
    """Build the artifact on one input, run it on another; compare with eager bnlab.

    ``runs_on_make``: building the artifact runs the model once (tracing, compiling), so
    the eager reference runs that input too. ``state``: the artifact's running
    statistics after the new input (default: the model's own).
    """
    x_make, x_new = case.input(1), case.input(2)
    model, reference = case.model(), case.model()
    artifact = make(model, x_make)
    if runs_on_make:
        reference(x_make)
    y, y_ref = artifact(x_new), reference(x_new)
    err = float((y - y_ref).abs().max() / y_ref.abs().max())
    assert err < RTOL, f"output differs from eager by {err:.2e} (relative)"
    if case.training:
        got = state(model, artifact) if state else _stats(model)
        for key, value in _stats(reference).items():
            torch.testing.assert_close(got[key], value, rtol=RTOL, atol=1e-6, msg=key)


def _compiled(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    compiled(x)
    return compiled


def test_compile_fullgraph_without_graph_breaks(case: Case) -> None:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(case.model())(case.input(1))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    _assert_matches(case, _compiled, runs_on_make=True)


def test_compiled_training_step_matches_eager_gradients(case: Case) -> None:
    if not case.training:
        pytest.skip("gradients are checked in training mode")
    x = case.input(2)
    model, reference = case.model(), case.model()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    compiled(x).square().mean().backward()
    reference(x).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        err = float((p.grad - q.grad).abs().max() / q.grad.abs().max())
        assert err < 1e-3, f"{name}: gradient differs by {err:.2e}"


def test_export_and_its_module(case: Case) -> None:
    def make(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
        program = torch.export.export(model, (x,))
        ops = {str(node.target) for node in program.graph.nodes}
        fused = any("bnlab.fused_batch_norm" in op for op in ops)
        assert fused == (case.size == "fused"), ops  # the kernel survives as one node
        make.module = program.module()  # type: ignore[attr-defined]
        return make.module  # type: ignore[attr-defined, no-any-return]

    _assert_matches(case, make, runs_on_make=False, state=lambda m, a: _stats(a))  # type: ignore[arg-type]


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_jit_trace_never_bakes_the_tracing_input(case: Case, grad: bool) -> None:
    def make(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
        with torch.set_grad_enabled(grad), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, (x,), check_trace=False)
        assert "bnlab::" not in str(traced.inlined_graph)
        return traced

    with torch.set_grad_enabled(grad):
        _assert_matches(case, make, runs_on_make=True)


def test_jit_script(case: Case) -> None:
    _assert_matches(case, lambda m, x: torch.jit.script(m), runs_on_make=False)


def test_fx_symbolic_trace_keeps_bn_as_a_module(case: Case) -> None:
    def make(model: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
        graph_module = torch.fx.symbolic_trace(model)
        calls = [n.target for n in graph_module.graph.nodes if n.op == "call_module"]
        assert calls == ["bn0", "conv1", "bn1", "conv2", "bn2"]
        assert isinstance(graph_module.get_submodule("bn1"), nn.BatchNorm2d)
        return graph_module

    _assert_matches(case, make, runs_on_make=False)


def test_func_vmap_matches_a_loop(case: Case) -> None:
    model = case.model()
    if case.training:  # torch's own rule for BN under vmap: batch statistics, no buffers
        torch.func.replace_all_batch_norm_modules_(model)
    x = torch.stack([case.input(2), case.input(3)])
    y = torch.func.vmap(model)(x)
    expected = torch.stack([model(x[0]), model(x[1])])
    assert float((y - expected).abs().max() / expected.abs().max()) < RTOL


def test_func_grad_and_jvp_match_autograd(case: Case) -> None:
    model, reference = case.model(), case.model()
    x = case.input(2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())  # inputs, so that training may update them

    def loss(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(model, (p, b), (x,)).square().mean()

    grads = torch.func.grad(loss)(params, buffers)
    reference(x).square().mean().backward()
    for name, p in reference.named_parameters():
        assert p.grad is not None
        assert float((grads[name] - p.grad).abs().max() / p.grad.abs().max()) < 1e-3, name
    if case.training:
        for key, value in _stats(reference).items():
            torch.testing.assert_close(buffers[key], value, rtol=RTOL, atol=1e-6, msg=key)
    # Forward mode, against torch's own batch norm in the same model (float64).
    # Training BN under a functorch transform: torch's rule (batch statistics, no buffers).
    model64 = case.model().double()
    if case.training:
        torch.func.replace_all_batch_norm_modules_(model64)
    twin = copy.deepcopy(model64)
    for name in ("bn0", "bn1", "bn2"):
        setattr(twin, name, as_torch_batch_norm(getattr(twin, name), nn.BatchNorm2d))
    x64, t = x.double(), torch.randn_like(x, dtype=torch.float64)
    y, jvp = torch.func.jvp(model64, (x64,), (t,))
    y_twin, jvp_twin = torch.func.jvp(twin, (x64,), (t,))
    torch.testing.assert_close(y, y_twin)
    torch.testing.assert_close(jvp, jvp_twin)


def test_meta_and_fake_tensor_forward(case: Case) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = case.input(2)
    expected = case.model()(x)
    meta = case.model().to("meta")(x.to("meta"))
    # Shape and dtype (torch's own meta path drops channels-last strides, BN or not).
    assert meta.shape == expected.shape and meta.dtype == expected.dtype
    model = case.model()
    with FakeTensorMode() as mode:
        state = {k: mode.from_tensor(v) for k, v in model.state_dict(keep_vars=True).items()}
        fake = torch.func.functional_call(model, state, (mode.from_tensor(x),))
    assert fake.shape == expected.shape and fake.stride() == expected.stride()


def test_forward_ad_dual_tensors(case: Case) -> None:
    import torch.autograd.forward_ad as fwAD

    model = copy.deepcopy(case.model()).eval()
    x, t = case.input(2), case.input(3)
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, t))
        tangent = fwAD.unpack_dual(out).tangent
    assert tangent is not None and tangent.shape == x.shape and torch.isfinite(tangent).all()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_runs_in_onnxruntime(case: Case, dynamo: bool, tmp_path: object) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if case.training:
        pytest.skip("ONNX is an inference format: eval mode only")
    model = case.model()
    path = f"{tmp_path}/model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (case.input(1),), path, dynamo=dynamo)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "BatchNormalization" in ops, ops  # bn0 (on the input) cannot be folded away
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(path).graph.node)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = case.input(2)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.contiguous().numpy()})
    expected = model(x).detach()
    assert float((torch.from_numpy(y) - expected).abs().max() / expected.abs().max()) < RTOL
