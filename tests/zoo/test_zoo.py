"""bnlab as a drop-in on the networks PyTorch users train: torchvision's and timm's model code
(``bnlab.bench.zoo``, no weights), through conversion, a training step, eval, folding,
SyncBatchNorm, ``torch.compile``, ``torch.export``, ONNX and ``torch.jit.trace``.

Numbers are judged against the float64 run of the same torch model: bnlab's error on every
tensor may be at most 2x torch's own float32 error (``bnlab.bench.zoo.judge``), since deep
networks amplify rounding too differently for any fixed tolerance. A training step is
compared with the float64 step that took its own ReLU, ReLU6 and max-pool branches
(``zoo.replay_kinks``): one input within rounding of a kink flips in some float32 run and
moves gradients by a whole element. Where torch's own model fails a path the same way, the
test is skipped as an upstream limit. The cheap paths run every network but the three
largest with the "auto" and the "fused" backend (the fused kernel at any size) in the fast
suite; the compilers and exporters run a couple of networks there, the rest under
``-m slow``.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from zoo_cases import (
    BACKENDS,
    Judged,
    ZooCase,
    assert_judged,
    assert_step_judged,
    judged_failures,
    models,
    plain,
)

import bnlab
from bnlab.bench import zoo
from bnlab.norm import FoldWarning, resolve_backend

REASON = zoo.zoo_available()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "the zoo is available")

#: The largest networks (25M to 133M parameters: seconds per float64 step each) run every
#: path in the slow suite only; the fast suite runs the cheap paths on all the others.
HEAVY = ("tv-resnext50_32x4d", "tv-wide_resnet50_2", "tv-vgg11_bn")
FAST_MODELS = tuple(m.name for m in zoo.ZOO if m.name not in HEAVY)
#: Networks whose exported and traced forms run in the fast suite.
FAST_EXPORT = ("tv-resnet18", "timm-mobilenetv3_small_100")
#: Batch sizes an exported program runs at (it was exported at the zoo's batch, 4).
OTHER_BATCHES = (2, 6)


def _convertible_types() -> tuple[type[nn.Module], ...]:
    """torch's batch norms and timm's BatchNormAct2d: what convert_batchnorm must convert."""
    timm_layers = importlib.import_module("timm.layers")
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, timm_layers.BatchNormAct2d)


def _kinds(model: nn.Module) -> tuple[set[str], set[str]]:
    """``(required, others)``: the layers a converter must convert, and the batch-norm
    subclasses with their own ``forward``, which it may handle or leave (with what they
    hold: timm's SplitBatchNorm2d keeps plain BN layers inside)."""
    source = zoo.batch_norm_layers(model)
    others = {n for n, m in source.items() if type(m) not in _convertible_types()}
    required = {
        n for n in set(source) - others if not any(n.startswith(f"{o}.") for o in others if o)
    }
    return required, others


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


# --- conversion ----------------------------------------------------------------------


@pytest.mark.parametrize("case", models(fast=FAST_MODELS), indirect=True)
def test_convert_batchnorm_keeps_layers_state_and_outputs(case: ZooCase) -> None:
    torch_model = case.fresh()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = bnlab.convert_batchnorm(torch_model)
    source = zoo.batch_norm_layers(torch_model)
    required, others = _kinds(torch_model)
    ours = set(zoo.bnlab_layers(converted))
    assert source, "a zoo network without batch norm"
    assert not required - ours, f"not converted: {sorted(required - ours)[:5]}"
    assert not ours - set(source), f"bnlab layers where no BN was: {sorted(ours - set(source))}"
    if not others:  # every batch-norm layer is torch's or timm's BatchNormAct2d
        assert len(ours) == len(source)
    messages = " ".join(str(w.message) for w in caught)
    left_silently = [n for n in others - ours if n not in messages]
    assert not left_silently, f"BN subclasses left without a warning naming them: {left_silently}"

    # state_dict both ways, strictly: torch -> bnlab, bnlab -> a fresh torch model.
    converted.load_state_dict(torch_model.state_dict(), strict=True)
    back = case.entry.build()
    back.load_state_dict(converted.state_dict(), strict=True)
    x = case.eval_input()
    with torch.no_grad():
        y_back, y_torch = back.eval()(x), torch_model.eval()(x)
        y = converted.eval()(x)
    assert torch.equal(y_back, y_torch), "a torch model loaded from bnlab's state differs"
    reference = case.eval_reference()
    assert_judged(
        Judged({"output": y}, reference), plain(reference, case.eval_baselines()), what="eval"
    )


# --- one training step, eval, SyncBatchNorm -------------------------------------------

#: Where the fused kernel, forced onto every layer, misses the 2x-torch bound (measured
#: 2026-12-08; "auto" passes on both). Strict: the day they pass, the marker must go.
FUSED_GAPS = {
    "tv-mnasnet0_5": "grad of classifier.1.bias and layers.15.bias: 1.14e-05 and 1.1e-05 "
    "from float64, torch's 5.45e-06 and 5.27e-06",
    "timm-repvgg_a0": "running_mean of stem.conv_1x1.bn: 2.53e-07 from float64, torch's 3.68e-08",
}


def _known_gap(request: pytest.FixtureRequest, case: ZooCase, backend: str) -> None:
    if backend == "fused" and case.name in FUSED_GAPS:
        reason = f"fused kernel beyond 2x torch's error: {FUSED_GAPS[case.name]}"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_MODELS), indirect=True)
def test_training_step_is_as_accurate_as_torch(
    case: ZooCase, backend: str, request: pytest.FixtureRequest
) -> None:
    _known_gap(request, case, backend)
    x, target = case.step_data()

    def step() -> dict[str, Tensor]:
        return zoo.training_step(bnlab.convert_batchnorm(case.fresh(), backend=backend), x, target)

    assert_step_judged(case, step(), step)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_MODELS), indirect=True)
def test_eval_forward_is_as_accurate_as_torch(case: ZooCase, backend: str) -> None:
    model = bnlab.convert_batchnorm(case.fresh(), backend=backend).eval()
    with torch.no_grad():
        y = model(case.eval_input())
    reference = case.eval_reference()
    assert_judged(
        Judged({"output": y}, reference), plain(reference, case.eval_baselines()), what="eval"
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_MODELS), indirect=True)
def test_convert_sync_batchnorm_on_one_process_is_plain_batch_norm(
    case: ZooCase, backend: str, request: pytest.FixtureRequest
) -> None:
    _known_gap(request, case, backend)
    assert not (dist.is_available() and dist.is_initialized())
    x, target = case.step_data()

    def synced() -> nn.Module:
        model = case.fresh()
        if backend != "auto":
            model = bnlab.convert_batchnorm(model, backend=backend)
        return bnlab.convert_sync_batchnorm(model)

    model = synced()
    required, _ = _kinds(case.model)
    synced_layers = {n for n, m in model.named_modules() if isinstance(m, bnlab.SyncBatchNorm)}
    assert not required - synced_layers, f"not synced: {sorted(required - synced_layers)[:5]}"
    assert_step_judged(
        case,
        zoo.training_step(model, x, target),
        lambda: zoo.training_step(synced(), x, target),
        what="sync step",
    )


# --- folding --------------------------------------------------------------------------


#: What fold_bn is given: torch's model, or bnlab's conversion of it with a backend.
FOLD_SOURCES = {"torch": None, "bnlab": "auto", "bnlab-fused": "fused"}


@pytest.mark.parametrize("source", list(FOLD_SOURCES))
@pytest.mark.parametrize("case", models(fast=FAST_MODELS), indirect=True)
def test_fold_bn_never_changes_the_output(case: ZooCase, source: str) -> None:
    # Float64, where folding's own rounding is far below anything a changed network does
    # (a dropped activation is off by 1e-2 or more).
    model = case.fresh().double().eval()
    backend = FOLD_SOURCES[source]
    if backend is not None:
        model = bnlab.convert_batchnorm(model, backend=backend).eval()
    x = case.eval_input().double()
    with torch.no_grad():
        expected = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FoldWarning)  # a BN left in place is fine
            folded, report = bnlab.fold_bn(model, return_report=True)
        y = folded(x)
    required, _ = _kinds(case.model)
    assert report.done or not required, f"nothing folded: {report}"
    err = zoo.relative_error(y, expected)
    assert err < 1e-9, f"fold_bn changed the output by {err:.3g} (relative, float64)\n{report}"


# --- compiled, exported, traced -------------------------------------------------------


def _judge_on_path(
    case: ZooCase,
    path: str,
    run: Callable[[nn.Module], dict[str, Tensor]],
    backend: str,
    reference: dict[str, Tensor],
    torch_runs: list[Judged],
    *,
    target: Tensor | None = None,
    rerun: Callable[[], object] | None = None,
) -> None:
    """Judge bnlab's converted model through ``run`` against the float64 ``reference``.

    torch's own model goes through ``run`` too (once per case and path), but only when
    needed, since compiling and exporting cost minutes: where bnlab's run fails (the
    same exception type from torch's is an upstream limit: skipped), and where bnlab's
    result misses torch's eager runs (torch's result on the path then joins them: a
    compiler's or exporter's own rounding is not bnlab's). ``rerun`` (a training step)
    repeats bnlab's step eagerly to record its kinks' branches.
    """

    def torch_run() -> tuple[dict[str, Tensor] | None, BaseException | None]:
        try:
            return run(case.fresh()), None
        except Exception as err:
            return None, err

    try:
        result = run(bnlab.convert_batchnorm(case.fresh(), backend=backend))
    except Exception as err:
        _, torch_error = case.cached(("path", path), torch_run)
        if torch_error is not None and type(torch_error) is type(err):
            pytest.skip(
                f"upstream limit: torch's own batch norm fails the same way "
                f"({_first_line(torch_error)})"
            )
        raise
    candidate = Judged(result, reference)
    failures = judged_failures(candidate, torch_runs, target=target)
    if failures and rerun is not None:
        candidate = Judged(result, case.own_reference(rerun))
        failures = judged_failures(candidate, torch_runs, target=target)
    if failures:
        torch_result, _ = case.cached(("path", path), torch_run)
        if torch_result is not None:
            with_path = [*torch_runs, Judged(torch_result, reference)]
            failures = judged_failures(candidate, with_path, target=target)
    if failures:
        pytest.fail(f"{path}: {failures}", pytrace=False)


#: (network, backend) pairs compiled in the fast suite: inductor takes about 40 s for
#: resnet18's training graph on this machine, minutes for the deeper networks.
FAST_COMPILE = {("tv-resnet18", "fused")}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    ("case", "backend"),
    [
        pytest.param(
            m.name,
            backend,
            id=f"{m.name}-{backend}",
            marks=() if (m.name, backend) in FAST_COMPILE else (pytest.mark.slow,),
        )
        for m in zoo.ZOO
        for backend in BACKENDS
    ],
    indirect=["case"],
)
def test_compile_fullgraph_matches_eager(case: ZooCase, backend: str, mode: str) -> None:
    x, target = case.step_data()

    def run(model: nn.Module) -> dict[str, Tensor]:
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        if mode == "train":
            return zoo.training_step(model, x, target, forward=compiled)
        model.eval()
        with torch.no_grad():
            return {"output": compiled(case.eval_input())}

    if mode == "train":

        def eager_step() -> dict[str, Tensor]:
            model = bnlab.convert_batchnorm(case.fresh(), backend=backend)
            return zoo.training_step(model, x, target)

        reference, torch_runs = case.step_reference(), case.step_torch_runs()
        _judge_on_path(
            case,
            "compile-train",
            run,
            backend,
            reference,
            torch_runs,
            target=target,
            rerun=eager_step,
        )
    else:
        reference = case.eval_reference()
        torch_runs = plain(reference, case.eval_baselines())
        _judge_on_path(case, "compile-eval", run, backend, reference, torch_runs)


def _batched(case: ZooCase) -> tuple[dict[str, Tensor], list[Judged]]:
    """Eager float64 reference and torch's float32 runs at each of OTHER_BATCHES."""
    reference = {f"output@{b}": case.eval_reference(b)["output"] for b in OTHER_BATCHES}
    baselines = [
        {f"output@{b}": case.eval_baselines(b)[i]["output"] for b in OTHER_BATCHES}
        for i in range(2)
    ]
    return reference, plain(reference, baselines)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_EXPORT), indirect=True)
def test_export_with_a_dynamic_batch(case: ZooCase, backend: str) -> None:
    def run(model: nn.Module) -> dict[str, Tensor]:
        model.eval()
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (case.eval_input(),), dynamic_shapes=({0: batch},))
        module = program.module()
        with torch.no_grad():
            return {f"output@{b}": module(case.eval_input(b)) for b in OTHER_BATCHES}

    reference, baselines = _batched(case)
    _judge_on_path(case, "export", run, backend, reference, baselines)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_EXPORT), indirect=True)
def test_onnx_dynamo_export_runs_in_onnxruntime(
    case: ZooCase, backend: str, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    def run(model: nn.Module) -> dict[str, Tensor]:
        model.eval()
        path = tmp_path / f"{type(model).__name__}-{id(model)}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (case.eval_input(),),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs: dict[str, Tensor] = {}
        for b in OTHER_BATCHES:
            (y, *_) = session.run(None, {name: case.eval_input(b).numpy()})
            outputs[f"output@{b}"] = torch.from_numpy(y)
        return outputs

    reference, baselines = _batched(case)
    _judge_on_path(case, "onnx", run, backend, reference, baselines)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", models(fast=FAST_EXPORT), indirect=True)
def test_jit_trace_runs_a_new_input(case: ZooCase, backend: str) -> None:
    def run(model: nn.Module) -> dict[str, Tensor]:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, (case.entry.input(1),), check_trace=False)
            return {"output": traced(case.eval_input())}

    reference = case.eval_reference()
    _judge_on_path(case, "trace", run, backend, reference, plain(reference, case.eval_baselines()))


# --- a real size ----------------------------------------------------------------------


@pytest.mark.slow
def test_resnet18_training_step_at_imagenet_size_with_the_auto_backend() -> None:
    """torchvision resnet18, batch 16 at 224x224: "auto" runs the fused kernel itself."""
    entry = dataclasses.replace(zoo.zoo_model("tv-resnet18"), size=224, batch=16)
    stem = torch.empty(16, 64, 112, 112)  # the stem's BN input
    assert resolve_backend("auto", stem, True) == "fused"
    case = ZooCase(entry)
    x, target = case.step_data()

    def step() -> dict[str, Tensor]:
        return zoo.training_step(bnlab.convert_batchnorm(case.fresh()), x, target)

    assert_step_judged(case, step(), step, what="224x224 step")
