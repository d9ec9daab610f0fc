"""The model zoo: torchvision and timm classification networks that use batch norm, built
without weights, and the judge that compares bnlab with torch against a float64 run.

torchvision's wheels on this project's machines are built against a CUDA torch, so a plain
``import torchvision`` fails next to the CPU torch: its ``__init__`` loads a C extension
that needs ``libc10_cuda.so``, then ``_meta_registrations`` stops with "operator
torchvision::nms does not exist". The model definitions need none of those C++ operators,
so :func:`import_torchvision` registers ``torchvision`` as a bare package whose
``__path__`` is the installed folder and skips its ``__init__`` -- only when the plain
import fails (a matching torchvision is imported as usual). torchvision and timm are
optional (the ``zoo`` extra): they are imported inside the functions, never with bnlab.

The judge (:func:`judge`) measures each tensor's relative error against a float64 run and
allows 2x torch's own float32 error; :func:`decomposed_batch_norm` is torch's second way
to compute batch norm, and :func:`record_kinks` / :func:`replay_kinks` let the float64
run take a float32 run's ReLU, ReLU6 and max-pool branches.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._decomp import decomposition_table
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "TIMM_MODELS",
    "TORCHVISION_MODELS",
    "ZOO",
    "KinkReplayError",
    "Verdict",
    "ZooModel",
    "batch_norm_layers",
    "bnlab_layers",
    "decomposed_batch_norm",
    "errors_against",
    "freeze_stochastic",
    "import_timm",
    "import_torchvision",
    "judge",
    "judge_errors",
    "loss_allowance",
    "record_kinks",
    "relative_error",
    "replay_kinks",
    "same_decisions",
    "training_step",
    "warm_up",
    "zoo_available",
    "zoo_model",
]


def import_torchvision() -> types.ModuleType:
    """``torchvision``, imported for its model code (see the module docstring).

    Returns the real package where ``import torchvision`` works; otherwise a package
    module for the installed folder that skips ``__init__`` (so ``torchvision.models``
    and ``torchvision.ops`` load, the C++ operators do not).

    Raises:
        ModuleNotFoundError: torchvision is not installed (``pip install bnlab[zoo]``).
    """
    loaded = sys.modules.get("torchvision")
    if loaded is not None:
        return loaded
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError:
        raise
    except (ImportError, OSError, RuntimeError):
        pass  # a torchvision built for another torch: below, its model code alone
    # The failed import left its first submodules behind; drop them so that each loads
    # again under the bare package.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("torchvision is not installed (pip install 'bnlab[zoo]')")
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    package.__version__ = importlib.metadata.version("torchvision")  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    return package


def import_timm() -> types.ModuleType:
    """``timm`` (which imports ``torchvision.ops`` at import time: torchvision goes first)."""
    import_torchvision()
    return importlib.import_module("timm")


def zoo_available() -> str:
    """ "" when torchvision's and timm's model code import, else why not (for a skip)."""
    try:
        import_timm()
        importlib.import_module("torchvision.models")
    except ImportError as err:
        return f"the model zoo needs torchvision and timm (pip install 'bnlab[zoo]'): {err}"
    return ""


@dataclass(frozen=True)
class ZooModel:
    """One network of the zoo and the input it is checked on.

    ``name`` is ``"tv-<arch>"`` or ``"timm-<arch>"`` (plus ``"-splitbn"`` for timm's
    auxiliary-BN variant); the input is ``(batch, 3, size, size)``.
    """

    name: str
    library: str  # "torchvision" or "timm"
    arch: str
    size: int = 64  # pixels per side; inception_v3 needs >= 75
    batch: int = 4  # even: timm's split BN halves it
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    split_bn: bool = False  # timm.layers.convert_splitbn_model(num_splits=2) after building
    num_classes: int = 10

    def build(self) -> nn.Module:
        """The network with fresh, seeded weights (no weights are ever downloaded)."""
        torch.manual_seed(0)
        if self.library == "torchvision":
            import_torchvision()
            models = importlib.import_module("torchvision.models")
            built: nn.Module = models.get_model(
                self.arch, weights=None, num_classes=self.num_classes, **self.kwargs
            )
            return built
        timm = import_timm()
        model: nn.Module = timm.create_model(
            self.arch, pretrained=False, num_classes=self.num_classes, **self.kwargs
        )
        if self.split_bn:
            model = timm.layers.convert_splitbn_model(model, num_splits=2)
        return model

    def input(self, seed: int = 0, batch: int | None = None) -> Tensor:
        """A seeded image batch ``(batch, 3, size, size)``, float32."""
        generator = torch.Generator().manual_seed(seed)
        shape = (self.batch if batch is None else batch, 3, self.size, self.size)
        return torch.randn(shape, generator=generator)

    def target(self, seed: int = 0, batch: int | None = None) -> Tensor:
        """Seeded class labels for :meth:`input`."""
        generator = torch.Generator().manual_seed(seed + 1000)
        n = self.batch if batch is None else batch
        return torch.randint(0, self.num_classes, (n,), generator=generator)


def _tv(arch: str, **kwargs: Any) -> ZooModel:
    size = int(kwargs.pop("size", 64))
    return ZooModel(f"tv-{arch}", "torchvision", arch, size=size, kwargs=kwargs)


def _timm(arch: str, *, split_bn: bool = False) -> ZooModel:
    name = f"timm-{arch}" + ("-splitbn" if split_bn else "")
    # timm applies dropout before the classifier functionally (``F.dropout(x,
    # training=self.training)``), which no module switch reaches: off at construction.
    return ZooModel(name, "timm", arch, split_bn=split_bn, kwargs={"drop_rate": 0.0})


#: Every torchvision classification family that contains batch norm.
TORCHVISION_MODELS: tuple[ZooModel, ...] = (
    _tv("resnet18"),
    _tv("resnext50_32x4d"),
    _tv("wide_resnet50_2"),
    _tv("mobilenet_v2"),
    _tv("mobilenet_v3_small"),
    _tv("efficientnet_b0"),
    _tv("regnet_y_400mf"),
    _tv("densenet121"),
    _tv("shufflenet_v2_x0_5"),
    _tv("mnasnet0_5"),
    _tv("googlenet", aux_logits=False, init_weights=True),
    _tv("inception_v3", aux_logits=False, init_weights=True, size=75),
    _tv("vgg11_bn"),
)

#: timm families: plain ``nn.BatchNorm2d`` (resnet18, dla46_c), timm's ``BatchNormAct2d``
#: (BN then an activation in one ``nn.BatchNorm2d`` subclass: mobilenetv3, efficientnet,
#: regnetx, repvgg), both (ghostnet), and timm's ``SplitBatchNorm2d`` (auxiliary BN
#: layers for part of the batch, ``convert_splitbn_model``).
TIMM_MODELS: tuple[ZooModel, ...] = (
    _timm("resnet18"),
    _timm("mobilenetv3_small_100"),
    _timm("efficientnet_b0"),
    _timm("regnetx_002"),
    _timm("repvgg_a0"),
    _timm("dla46_c"),
    _timm("ghostnet_050"),
    _timm("mobilenetv3_small_100", split_bn=True),
)

ZOO: tuple[ZooModel, ...] = TORCHVISION_MODELS + TIMM_MODELS


def zoo_model(name: str) -> ZooModel:
    """The zoo entry called ``name``; raises KeyError listing the names otherwise."""
    for entry in ZOO:
        if entry.name == name:
            return entry
    raise KeyError(f"no zoo model {name!r}; the zoo has {', '.join(m.name for m in ZOO)}")


# --- model surgery shared by the checks -----------------------------------------------

_STOCHASTIC = ("DropPath", "StochasticDepth", "DropBlock2d", "DropBlock")


def freeze_stochastic(model: nn.Module) -> nn.Module:
    """Put every dropout, drop-path and stochastic-depth module in eval mode (in place).

    Batch norm stays in its mode; with nothing random left, two runs of a training step
    see the same network.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) or any(
            type(module).__name__ == name for name in _STOCHASTIC
        ):
            module.eval()
    return model


def batch_norm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every batch-norm layer of ``model`` (instances of torch's base), by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def bnlab_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The batch-norm layers of ``model`` whose class is bnlab's, by name."""
    return {
        name: m
        for name, m in batch_norm_layers(model).items()
        if type(m).__module__.split(".")[0] == "bnlab"
    }


@torch.no_grad()
def warm_up(model: nn.Module, inputs: Iterable[Tensor], *, seed: int = 0) -> nn.Module:
    """Give ``model`` trained-looking batch norm, then put it in eval mode (in place).

    Affine parameters drawn from ``U(0.5, 1.5)`` and ``U(-0.5, 0.5)`` (seeded), and
    running statistics averaged over ``inputs`` (cumulative average, whatever the
    layer's momentum), so eval mode normalizes with the statistics of real activations.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = batch_norm_layers(model)
    for bn in layers.values():
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
        if bn.bias is not None:
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=generator) - 0.5)
    momenta = {name: bn.momentum for name, bn in layers.items()}
    for bn in layers.values():
        bn.reset_running_stats()
        bn.momentum = None
    freeze_stochastic(model.train())
    try:
        for x in inputs:
            model(x)
    finally:
        for name, bn in layers.items():
            bn.momentum = momenta[name]
    return model.eval()


def training_step(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """One training step without the update: forward, cross-entropy, backward.

    Runs ``model`` in training mode with :func:`freeze_stochastic`, through ``forward``
    when given (a compiled or exported form of ``model`` that trains its parameters).
    Returns everything the step changes: ``"output"``, ``"loss"``, ``"grad:<param>"``
    for every parameter that got a gradient, ``"buffer:<name>"`` for every running mean
    and variance.
    """
    freeze_stochastic(model.train())
    model.zero_grad(set_to_none=True)
    output = (model if forward is None else forward)(x)
    loss = F.cross_entropy(output, target)
    loss.backward()
    result = {"output": output.detach(), "loss": loss.detach()}
    for name, p in model.named_parameters():
        if p.grad is not None:
            result[f"grad:{name}"] = p.grad.detach().clone()
    for name, b in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            result[f"buffer:{name}"] = b.detach().clone()
    return result


# --- torch's second batch norm --------------------------------------------------------

_ATEN_BATCH_NORM = (
    torch.ops.aten.native_batch_norm.default,
    torch.ops.aten.native_batch_norm_backward.default,
)


class _DecomposedBatchNorm(TorchDispatchMode):
    """Runs ATen's batch-norm kernels as their decompositions (``torch._decomp``)."""

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _ATEN_BATCH_NORM:  # inside this method the mode is off: plain ops
            return decomposition_table[func](*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def decomposed_batch_norm() -> Iterator[None]:
    """Inside, torch's batch norm runs as its decomposition (forward and backward).

    The decomposition is torch's other way to compute batch norm, the one
    ``torch.compile`` generates code from: the same formula as ATen's kernel,
    other roundings. Two ways give torch's error a spread (see :func:`judge`).
    """
    with _DecomposedBatchNorm():
        yield


# --- the kinks' branches ---------------------------------------------------------------

_aten = torch.ops.aten
_RELU = (_aten.relu.default, _aten.relu_.default)
_HARDTANH = (_aten.hardtanh.default, _aten.hardtanh_.default)
_MAX_POOL = _aten.max_pool2d_with_indices.default

#: One branch decision of a kinked op, in the order the ops ran: ``("relu", mask)``,
#: ``("hardtanh", inside, above)`` or ``("max_pool", indices)``.
Decision = tuple[Any, ...]


def _hardtanh_bounds(args: tuple[Any, ...]) -> tuple[float, float]:
    low = float(args[1]) if len(args) > 1 else -1.0
    high = float(args[2]) if len(args) > 2 else 1.0
    return low, high


class _RecordKinks(TorchDispatchMode):
    """Records which branch each ReLU, ReLU6/hardtanh and max-pool element took."""

    def __init__(self) -> None:
        super().__init__()
        self.decisions: list[Decision] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELU:
            self.decisions.append(("relu", args[0] > 0))  # before an in-place op runs
        elif func in _HARDTANH:
            low, high = _hardtanh_bounds(args)
            x = args[0]
            self.decisions.append(("hardtanh", (x > low) & (x < high), x >= high))
        out = func(*args, **kwargs)
        if func is _MAX_POOL:
            self.decisions.append(("max_pool", out[1].clone()))
        return out


class KinkReplayError(RuntimeError):
    """A replayed run reached a kinked op that the recorded run did not (or another)."""


class _ReplayKinks(TorchDispatchMode):
    """Makes each kinked op take the recorded branch, forward and backward."""

    def __init__(self, decisions: Sequence[Decision]) -> None:
        super().__init__()
        self.decisions = list(decisions)
        self.next = 0
        self.relu_masks: dict[int, Tensor] = {}  # result's data_ptr -> mask
        self.hardtanh_inside: dict[int, Tensor] = {}  # input's data_ptr -> inside mask

    def _take(self, kind: str, shape: torch.Size) -> Decision:
        if self.next >= len(self.decisions):
            raise KinkReplayError(f"more kinked ops than recorded (a {kind})")
        decision = self.decisions[self.next]
        self.next += 1
        if decision[0] != kind or decision[1].shape != shape:
            raise KinkReplayError(
                f"op {self.next}: recorded a {decision[0]} of {tuple(decision[1].shape)}, "
                f"replaying a {kind} of {tuple(shape)}"
            )
        return decision

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELU:
            x = args[0]
            _, mask = self._take("relu", x.shape)
            result = x.mul_(mask) if func is _aten.relu_.default else x * mask
            self.relu_masks[result.data_ptr()] = mask
            return result
        if func is _aten.threshold_backward.default:
            mask = self.relu_masks.get(args[1].data_ptr())
            if mask is not None and float(args[2]) == 0.0 and mask.shape == args[0].shape:
                return args[0] * mask
        if func in _HARDTANH:
            x = args[0]
            low, high = _hardtanh_bounds(args)
            _, inside, above = self._take("hardtanh", x.shape)
            value = torch.where(inside, x, torch.where(above, high, low).to(x.dtype))
            self.hardtanh_inside[x.data_ptr()] = inside
            if func is _aten.hardtanh_.default:
                return x.copy_(value)
            self.hardtanh_inside[value.data_ptr()] = inside
            return value
        if func is _aten.hardtanh_backward.default:
            inside = self.hardtanh_inside.get(args[1].data_ptr())
            if inside is not None and inside.shape == args[0].shape:
                return args[0] * inside
        if func is _MAX_POOL:
            x = args[0]
            out_values, out_indices = func(*args, **kwargs)
            _, indices = self._take("max_pool", out_indices.shape)
            values = x.flatten(-2).gather(-1, indices.flatten(-2)).view(indices.shape)
            return values.to(out_values.dtype), indices
        return func(*args, **kwargs)


@contextmanager
def record_kinks() -> Iterator[list[Decision]]:
    """Inside, the branch of every ReLU, ReLU6 (hardtanh) and max-pool element is recorded
    into the yielded list, in the order the ops run."""
    mode = _RecordKinks()
    with mode:
        yield mode.decisions


@contextmanager
def replay_kinks(decisions: Sequence[Decision]) -> Iterator[None]:
    """Inside, each ReLU, ReLU6 and max pool takes the branch in ``decisions`` (from
    :func:`record_kinks`), in its output and its gradient.

    A value within rounding of a kink (a ReLU input of 1e-7, two near-equal maxima) may
    fall either way in any float32 run, and the gradient then differs by that element's
    whole contribution; a float64 run that takes the float32 run's branches measures
    the rounding alone. Raises :class:`KinkReplayError` when the run's kinked ops are
    not the recorded ones.
    """
    with _ReplayKinks(decisions):
        yield


def same_decisions(a: Sequence[Decision], b: Sequence[Decision]) -> bool:
    """Whether two recorded runs took the same branch everywhere."""
    return len(a) == len(b) and all(
        x[0] == y[0] and all(torch.equal(p, q) for p, q in zip(x[1:], y[1:], strict=True))
        for x, y in zip(a, b, strict=True)
    )


# --- the judge ------------------------------------------------------------------------


def relative_error(value: Tensor, reference: Tensor) -> float:
    """``||value - reference|| / ||reference||`` (Frobenius norms, in float64).

    0 when both are equal (zeros included); inf when the reference is zero and the
    value is not, or when the shapes differ.
    """
    if value.shape != reference.shape:
        return float("inf")
    ref = reference.detach().double()
    diff = float(torch.linalg.vector_norm(value.detach().double() - ref))
    scale = float(torch.linalg.vector_norm(ref))
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0.0 else float("inf")


def errors_against(reference: Mapping[str, Tensor], run: Mapping[str, Tensor]) -> dict[str, float]:
    """:func:`relative_error` of each tensor of ``run`` against ``reference``, by key.

    A key missing on either side has error inf (a gradient torch computes and the other
    run does not, or the reverse, is a difference).
    """
    return {
        k: relative_error(run[k], reference[k]) if k in run and k in reference else float("inf")
        for k in sorted(set(reference) | set(run))
    }


@dataclass(frozen=True)
class Verdict:
    """One tensor of a comparison: its error and torch's, both against float64."""

    key: str
    torch_error: float  # the larger of torch's float32 runs
    error: float  # the run under test
    bound: float  # what the error may be

    @property
    def ok(self) -> bool:
        return self.error <= self.bound

    def __str__(self) -> str:
        return (
            f"{self.key}: error {self.error:.3g} vs torch's {self.torch_error:.3g} "
            f"(bound {self.bound:.3g})"
        )


def judge_errors(
    torch_errors: Sequence[Mapping[str, float]],
    errors: Mapping[str, float],
    *,
    factor: float = 2.0,
    floor: float = 1e-7,
    allowances: Mapping[str, float] | None = None,
) -> list[Verdict]:
    """Is each error of a run at most ``factor`` times torch's, plus ``floor``?

    ``torch_errors``: one dict per torch float32 run (:func:`errors_against` its float64
    reference); torch's error on a tensor is the largest of them. ``allowances`` raise
    the bound of given keys to at least that error (:func:`loss_allowance`). Every key of
    any run is judged; a key one run lacks counts as an infinite error there.

    Raises:
        ValueError: no torch run.
    """
    if not torch_errors:
        raise ValueError("judging needs at least one torch baseline run")
    keys = sorted(set(errors).union(*torch_errors))
    verdicts = []
    for k in keys:
        torch_error = max(e.get(k, float("inf")) for e in torch_errors)
        bound = factor * torch_error + floor
        if allowances and k in allowances:
            bound = max(bound, allowances[k])
        verdicts.append(Verdict(k, torch_error, errors.get(k, float("inf")), bound))
    return verdicts


def judge(
    reference: Mapping[str, Tensor],
    baselines: Sequence[Mapping[str, Tensor]],
    candidate: Mapping[str, Tensor],
    *,
    factor: float = 2.0,
    floor: float = 1e-7,
    allowances: Mapping[str, float] | None = None,
) -> list[Verdict]:
    """Is ``candidate`` as close to the float64 ``reference`` as torch's own float32 runs?

    Deep networks amplify float32 rounding, differently in each network, so no fixed
    tolerance separates a bug from rounding. The yardstick is torch itself: each
    tensor's relative error (:func:`relative_error`) against the float64 run may be at
    most ``factor`` times torch's error on that tensor, plus ``floor`` (for tensors torch
    happens to get exactly). Torch's error is the largest over ``baselines`` (its ATen
    kernel and its decomposition, :func:`decomposed_batch_norm`, and where a path is
    under test, torch's own model on that path): one float32 run's error is one sample
    of the rounding, and torch's two batch norms differ from each other by more than 2x
    on some tensors. Where runs took different branches at a kink, each run is compared
    with the float64 run that took its branches (:func:`replay_kinks`) through
    :func:`judge_errors`.

    Returns:
        One :class:`Verdict` per key, sorted by key; a failed one has ``ok`` False.

    Raises:
        ValueError: no baseline.
    """
    return judge_errors(
        [errors_against(reference, b) for b in baselines],
        errors_against(reference, candidate),
        factor=factor,
        floor=floor,
        allowances=allowances,
    )


def loss_allowance(reference: Mapping[str, Tensor], target: Tensor, output_bound: float) -> float:
    """The loss's relative error that an output within ``output_bound`` implies.

    The loss is one number: its error is the output's error projected on
    ``dloss/doutput``, a projection that can nearly vanish for one run and not for
    another, so a ratio to torch's error is a coin toss. To first order
    ``|dL| <= ||dL/dy|| * ||dy||``, with ``||dy|| <= output_bound * ||y||``; the
    gradient of the mean cross-entropy is ``(softmax(y) - onehot) / N``, taken from the
    float64 ``reference`` (a :func:`training_step` result).
    """
    y = reference["output"].double()
    grad = (torch.softmax(y, dim=1) - F.one_hot(target, y.shape[1]).double()) / y.shape[0]
    loss = abs(float(reference["loss"]))
    if loss == 0.0:
        return float("inf")
    return float(torch.linalg.vector_norm(grad) * torch.linalg.vector_norm(y)) * output_bound / loss
