"""``doctor(model, batch)``: find the classic batch-norm bugs in a model, each with its fix.

Checks: layers left in training mode at inference; single-example inference that disagrees
with batched inference (seed 001's pitfall); running statistics never updated or not
matching the data; a bias just before batch norm; batches too small for batch statistics;
eval-mode outputs that collapse or explode. The model is never changed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from bnlab.norm.layers.modules import BATCH_NORM_TYPES
from bnlab.norm.layers.safe import DegenerateBatchWarning, NonFiniteBatchWarning
from bnlab.norm.ops.core import batch_stats

__all__ = ["CHECKS", "DemoCase", "DoctorReport", "Finding", "demo_cases", "doctor"]

Severity = Literal["error", "warning"]

# The check codes, in report order, with what each looks for.
CHECKS: dict[str, str] = {
    "train-mode": "batch-norm layers left in training mode at inference",
    "single-vs-batched": "one example alone gives a different output than inside a batch",
    "stats-never-updated": "running statistics still at their initial values (mean 0, var 1)",
    "stats-mismatch": "running statistics far from the statistics of the sample batch",
    "bias-before-bn": "a conv/linear bias feeding batch norm, which cancels it",
    "small-batch": "too few values per channel for reliable batch statistics",
    "eval-output": "eval-mode outputs that collapse (no spread) or explode (huge or non-finite)",
}

# Thresholds, with the reason for each.
SMALL_BATCH = 16  # Wu & He 2018, Fig. 1: BN's error grows quickly below 16 examples per batch
SINGLE_EXAMPLES = 8  # examples fed one at a time: enough to see a disagreement, cheap
AGREE_RTOL = 1e-4  # float32 forward passes of one vs many examples differ by rounding only
MEAN_SHIFT = 3.0  # |batch mean - running mean| in running standard deviations (median)
VAR_RATIO = 10.0  # batch var / running var beyond [1/10, 10] (median over channels)
SPREAD_RATIO = 10.0  # eval vs train-mode output spread: collapse below 1/10, explode above 10


@dataclass(frozen=True)
class Finding:
    """One problem: which check found it, where, what it means, and how to fix it.

    Attributes:
        code: a key of :data:`CHECKS`.
        severity: ``"error"`` (wrong results) or ``"warning"`` (wasteful or fragile).
        message: what was measured, in one or two sentences.
        fix: what to do about it.
        layers: qualified names of the layers involved (may be empty).
    """

    code: str
    severity: Severity
    message: str
    fix: str
    layers: tuple[str, ...] = ()


@dataclass
class DoctorReport:
    """What :func:`doctor` found; ``print(report)`` gives a readable summary.

    Attributes:
        model: the model's class name.
        batch_shape: the shape of the sample batch.
        batch_norm_layers: qualified names of the batch-norm layers.
        checks: the check codes that ran.
        findings: the problems found (empty for a healthy model).
    """

    model: str
    batch_shape: tuple[int, ...]
    batch_norm_layers: list[str]
    checks: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when no check found anything."""
        return not self.findings

    def codes(self) -> list[str]:
        """The codes of the findings, in report order."""
        return [f.code for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``bnlab doctor --json``)."""
        out = asdict(self)
        out["healthy"] = self.healthy
        return out

    def __str__(self) -> str:
        lines = [
            f"bnlab doctor: {self.model}, {len(self.batch_norm_layers)} batch-norm layers, "
            f"sample batch {tuple(self.batch_shape)}"
        ]
        for f in self.findings:
            where = f" [{_short_list(f.layers)}]" if f.layers else ""
            lines.append(f"  {f.severity.upper():7s} {f.code}{where}")
            lines.append(
                textwrap.fill(f.message, 96, initial_indent=" " * 10, subsequent_indent=" " * 10)
            )
            lines.append(
                textwrap.fill(
                    "fix: " + f.fix, 96, initial_indent=" " * 10, subsequent_indent=" " * 15
                )
            )
        if self.healthy:
            lines.append(f"  healthy: no problems found ({len(self.checks)} checks)")
        else:
            errors = sum(f.severity == "error" for f in self.findings)
            lines.append(
                f"  {errors} error(s), {len(self.findings) - errors} warning(s) from "
                f"{len(self.checks)} checks"
            )
        return "\n".join(lines)


def _short_list(names: tuple[str, ...] | list[str], limit: int = 4) -> str:
    shown = ", ".join(n or "<model>" for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@contextlib.contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Parameters, buffers, training flags and the global RNG as they were, afterwards;
    no safe-statistics warnings from the probes."""
    tensors = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers())]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            # The probes may feed degenerate or non-finite batches on purpose; the layers'
            # safe-statistics warnings would describe the probe, not the user's training.
            warnings.simplefilter("ignore", NonFiniteBatchWarning)
            warnings.simplefilter("ignore", DegenerateBatchWarning)
            yield
    finally:
        with torch.no_grad():
            for t, saved in tensors:
                t.copy_(saved)
        for m, mode in modes:
            m.training = mode


def _first_tensor(out: Any) -> Tensor:
    """The tensor output of a model (the first tensor of a tuple/list/dict)."""
    if isinstance(out, Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out
    if isinstance(items, (tuple, list)) or isinstance(out, dict):
        for item in items:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"the model must return a tensor (or a tuple/dict of them); got {type(out)}")


def _bn_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BATCH_NORM_TYPES)}


def _running(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    return None if mean is None or var is None else (mean, var)


@dataclass
class _Trace:
    """What one forward pass saw at the batch-norm layers."""

    inputs: dict[str, Tensor] = field(default_factory=dict)  # BN layer -> its input
    bias_pairs: list[tuple[str, str]] = field(default_factory=list)  # (conv/linear, BN)


@contextlib.contextmanager
def _tracing(model: nn.Module, bns: dict[str, nn.Module]) -> Iterator[_Trace]:
    trace = _Trace()
    biased: dict[int, tuple[str, Tensor]] = {}  # id(output) -> (layer, output kept alive)
    handles: list[RemovableHandle] = []

    def after_biased(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                biased[id(out)] = (name, out)

        return hook

    def before_bn(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], Tensor):
                trace.inputs.setdefault(name, args[0].detach())
                source = biased.get(id(args[0]))
                if source is not None and source[1] is args[0]:
                    trace.bias_pairs.append((source[0], name))

        return hook

    try:
        for name, m in model.named_modules():
            weighted = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            if weighted and getattr(m, "bias", None) is not None:
                handles.append(m.register_forward_hook(after_biased(name)))
        for name, bn in bns.items():
            handles.append(bn.register_forward_pre_hook(before_bn(name)))
        yield trace
    finally:
        for h in handles:
            h.remove()


def _spread(out: Tensor) -> float:
    """Mean over output units of the standard deviation across the batch (dim 0)."""
    flat = out.detach().double().reshape(out.shape[0], -1)
    return float(flat.std(0, unbiased=False).mean()) if out.shape[0] > 1 else 0.0


def doctor(
    model: nn.Module,
    batch: Any,
    *,
    train_batch_size: int | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    single_examples: int = SINGLE_EXAMPLES,
) -> DoctorReport:
    """Inspect ``model`` on a sample ``batch`` for batch-norm bugs; each finding has a fix.

    The model is checked as it would be used for inference: its training flags as given
    (so pass the model as you would call it to predict). Forward passes run without grad
    on the model itself and everything is put back afterwards: parameters, buffers
    (running statistics, counters), every module's training flag and the global RNG.

    Args:
        model: the network.
        batch: an input tensor ``(N, ...)`` or an ``(input, target)`` pair; N >= 2.
        train_batch_size: the batch size used in training, if the sample batch is not
            (for the small-batch check; default: the sample's N).
        forward: ``forward(model, x)`` when a model needs more than ``model(x)``.
        single_examples: how many examples to also feed one at a time.

    Returns:
        A :class:`DoctorReport`; ``report.healthy`` is True when nothing was found.

    Raises:
        TypeError: ``model`` is not a module, or ``batch`` holds no tensor.
        ValueError: a batch of fewer than 2 examples.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    >>> report = doctor(net.eval(), torch.randn(32, 4))
    >>> report.codes()
    ['stats-never-updated', 'bias-before-bn']
    >>> report.findings[1].layers
    ('0', '1')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, Tensor):
        raise TypeError(f"batch must be a tensor or an (input, target) pair; got {type(x)}")
    if x.dim() < 1 or x.shape[0] < 2:
        raise ValueError(
            f"doctor needs a sample batch of at least 2 examples (dim 0); got shape "
            f"{tuple(x.shape)}"
        )
    run = forward or (lambda m, inp: m(inp))
    bns = _bn_layers(model)
    report = DoctorReport(type(model).__name__, tuple(x.shape), list(bns), list(CHECKS))
    add = report.findings.append
    with _preserved(model):
        # As given: the configuration the user would predict with.
        for f in _check_train_mode(bns):
            add(f)
        for f in _check_single_vs_batched(model, bns, x, run, single_examples):
            add(f)
        for f in _check_never_updated(bns):
            add(f)
        # Eval mode everywhere: what each layer sees with population statistics.
        model.eval()
        with _tracing(model, bns) as trace:
            eval_out = _first_tensor(run(model, x))
        for f in _check_stats_mismatch(bns, trace):
            add(f)
        for f in _check_bias_before_bn(trace):
            add(f)
        for f in _check_small_batch(bns, trace, train_batch_size or x.shape[0]):
            add(f)
        # Batch norm in training mode (everything else in eval): the output scale to expect.
        for bn in bns.values():
            bn.train()
        train_out = _first_tensor(run(model, x)) if bns else eval_out
        for f in _check_eval_output(eval_out, train_out, bool(bns)):
            add(f)
    order = list(CHECKS)
    report.findings.sort(key=lambda f: order.index(f.code))
    return report


def _check_train_mode(bns: dict[str, nn.Module]) -> list[Finding]:
    training = [name for name, bn in bns.items() if bn.training]
    if not training:
        return []
    return [
        Finding(
            "train-mode",
            "error",
            f"{len(training)} of {len(bns)} batch-norm layers are in training mode: they "
            "normalize each batch with its own statistics and update the running ones on "
            "every prediction.",
            "call model.eval() before inference (and model.train() to resume training).",
            tuple(training),
        )
    ]


def _check_single_vs_batched(
    model: nn.Module,
    bns: dict[str, nn.Module],
    x: Tensor,
    run: Callable[[nn.Module, Tensor], Any],
    k: int,
) -> list[Finding]:
    k = max(1, min(k, x.shape[0]))
    batched = _first_tensor(run(model, x))[:k]
    try:
        single = torch.cat([_first_tensor(run(model, x[i : i + 1])) for i in range(k)])
    except (ValueError, RuntimeError) as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        failure = "a single example fails ({})".format(
            text if len(text) < 200 else text[:197] + "..."
        )
        single = None
    if single is not None:
        scale = float(batched.abs().max()) if batched.numel() else 0.0
        diff = float((single - batched).abs().max()) if batched.numel() else 0.0
        if diff <= AGREE_RTOL * max(scale, 1.0) and math.isfinite(diff):
            return []
        failure = f"outputs differ by up to {diff:.3g} (output scale {scale:.3g})"
        if batched.dim() == 2 and batched.shape[1] > 1:
            agree = int((single.argmax(1) == batched.argmax(1)).sum())
            failure += f"; the predicted class agrees on {agree} of {k} examples"
    batch_dependent = [n for n, bn in bns.items() if bn.training or _running(bn) is None]
    if batch_dependent:
        fix = (
            "normalize with population statistics at inference: model.eval(), and layers "
            "built with track_running_stats=True (train them, or fill their statistics "
            "with bnlab.precise_bn(model, batches))."
        )
    else:
        fix = (
            "some layer other than batch norm mixes examples in eval mode; find it by "
            "comparing per-layer outputs for one example alone and inside a batch."
        )
    return [
        Finding(
            "single-vs-batched",
            "error",
            f"feeding {k} examples one at a time vs in one batch: {failure}. Layers using "
            "batch statistics at inference make a prediction depend on the other examples "
            "(seed 001: one example alone gets one constant prediction).",
            fix,
            tuple(batch_dependent),
        )
    ]


def _check_never_updated(bns: dict[str, nn.Module]) -> list[Finding]:
    stale = []
    for name, bn in bns.items():
        stats = _running(bn)
        if stats is None:
            continue
        tracked = getattr(bn, "num_batches_tracked", None)
        untouched = bool((stats[0] == 0).all()) and bool((stats[1] == 1).all())
        if untouched and (tracked is None or int(tracked) == 0):
            stale.append(name)
    if not stale:
        return []
    return [
        Finding(
            "stats-never-updated",
            "error",
            f"{len(stale)} batch-norm layers still hold their initial running statistics "
            "(mean 0, variance 1, no batch counted), so eval mode normalizes with numbers "
            "that describe no data.",
            "train with the layers in training mode, or run bnlab.precise_bn(model, batches) "
            "over training data; if the model came from a checkpoint, load it with "
            "strict=True and check it holds running_mean/running_var.",
            tuple(stale),
        )
    ]


def _check_stats_mismatch(bns: dict[str, nn.Module], trace: _Trace) -> list[Finding]:
    bad, details = [], []
    for name, bn in bns.items():
        stats, inp = _running(bn), trace.inputs.get(name)
        if stats is None or inp is None or inp.dim() < 2 or inp.numel() <= inp.shape[1]:
            continue
        eps = float(getattr(bn, "eps", 1e-5))
        mean, var = batch_stats(inp)
        r_mean, r_var = stats[0].to(mean.dtype), stats[1].to(var.dtype)
        shift = float(((mean - r_mean).abs() / (r_var + eps).sqrt()).median())
        ratio = float(((var + eps) / (r_var + eps)).median())
        if not (math.isfinite(shift) and math.isfinite(ratio)):
            bad.append(name)
            details.append(f"{name or '<model>'}: non-finite statistics")
        elif shift > MEAN_SHIFT or not 1 / VAR_RATIO <= ratio <= VAR_RATIO:
            bad.append(name)
            details.append(f"{name or '<model>'}: mean shift {shift:.3g} sd, var x{ratio:.3g}")
    if not bad:
        return []
    return [
        Finding(
            "stats-mismatch",
            "warning",
            "in eval mode the sample batch is far from the running statistics (median over "
            f"channels; limits {MEAN_SHIFT:g} sd and x{VAR_RATIO:g}): "
            + "; ".join(details[:4])
            + ("; ..." if len(details) > 4 else "")
            + ".",
            "check that inference data is preprocessed as in training; recompute the "
            "statistics on training data with bnlab.precise_bn(model, batches) (an EMA that "
            "never settled, or statistics from other data, shows up here).",
            tuple(bad),
        )
    ]


def _check_bias_before_bn(trace: _Trace) -> list[Finding]:
    return [
        Finding(
            "bias-before-bn",
            "warning",
            f"'{layer}' adds a bias that batch norm '{bn}' subtracts again with the batch "
            "mean: the bias is a wasted parameter (and in eval mode just shifts the "
            "running mean).",
            f"build '{layer}' with bias=False; the batch norm's own bias (beta) does the shift.",
            (layer, bn),
        )
        for layer, bn in trace.bias_pairs
    ]


def _check_small_batch(bns: dict[str, nn.Module], trace: _Trace, batch_size: int) -> list[Finding]:
    counts = {}
    for name in bns:
        inp = trace.inputs.get(name)
        if inp is not None and inp.dim() >= 2 and inp.shape[0] > 0:
            counts[name] = batch_size * (inp.numel() // inp.shape[0] // max(1, inp.shape[1]))
    if not counts or batch_size >= SMALL_BATCH:
        return []
    fewest = min(counts.values())
    severity: Severity = "error" if fewest < 2 else "warning"
    return [
        Finding(
            "small-batch",
            severity,
            f"batches of {batch_size} examples give batch statistics over as few as "
            f"{fewest} values per channel; below {SMALL_BATCH} examples batch norm's "
            "estimates are noisy and accuracy drops (Wu & He 2018, Fig. 1)"
            + (" (one value per channel cannot be normalized at all)" if fewest < 2 else "")
            + ".",
            "train with larger batches; or use a norm without batch statistics "
            "(get_norm('gn') group norm), batch renorm (get_norm('renorm')), or, when "
            "fine-tuning, frozen statistics (bnlab.freeze_bn(model)).",
            tuple(n for n, c in counts.items() if c == fewest),
        )
    ]


def _check_eval_output(eval_out: Tensor, train_out: Tensor, has_bn: bool) -> list[Finding]:
    fix = (
        "the running statistics do not describe the data the model sees: recompute them "
        "with bnlab.precise_bn(model, batches) on training data, check the preprocessing, "
        "and look for layers with near-zero running_var (explode) or huge ones (collapse)."
    )
    if not bool(torch.isfinite(eval_out).all()):
        bad = int((~torch.isfinite(eval_out)).sum())
        return [
            Finding(
                "eval-output",
                "error",
                f"eval-mode output explodes: {bad} of {eval_out.numel()} values are NaN/Inf.",
                fix,
            )
        ]
    if not has_bn:
        return []
    s_eval, s_train = _spread(eval_out), _spread(train_out)
    if not (s_train > 0 and math.isfinite(s_train)):
        return []
    ratio = s_eval / s_train
    if ratio > SPREAD_RATIO:
        what = "explodes"
    elif ratio < 1 / SPREAD_RATIO:
        what = "collapses"
    else:
        return []
    return [
        Finding(
            "eval-output",
            "error",
            f"eval-mode output {what}: its spread across the batch is {ratio:.3g} times "
            f"the spread with batch statistics ({s_eval:.3g} vs {s_train:.3g}).",
            fix,
        )
    ]


# -- deliberately broken example models (``bnlab doctor --demo``, tests, docs) -----------


@dataclass
class DemoCase:
    """A small model with one known batch-norm bug (or none), and the sample to check it on.

    Attributes:
        name: short id (``"train-mode"``, ...; ``"healthy"`` for the bug-free one).
        description: the story of the bug in one sentence.
        model, batch: what to pass to :func:`doctor`.
        options: extra keyword arguments for :func:`doctor`.
        expected: the finding codes :func:`doctor` must report (empty for healthy).
    """

    name: str
    description: str
    model: nn.Module
    batch: Tensor
    options: dict[str, Any]
    expected: tuple[str, ...]


def _demo_mlp(bias: bool = False, track: bool = True) -> nn.Sequential:
    from bnlab.norm.layers.modules import BatchNorm1d

    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(20, 32, bias=bias),
            bn1=BatchNorm1d(32, track_running_stats=track),
            act1=nn.ReLU(),
            fc2=nn.Linear(32, 32, bias=False),
            bn2=BatchNorm1d(32, track_running_stats=track),
            act2=nn.ReLU(),
            out=nn.Linear(32, 4),
        )
    )


def demo_cases(seed: int = 0) -> list[DemoCase]:
    """Seven small MLPs (20 -> 32 -> 32 -> 4, two batch-norm layers) on synthetic data: one
    healthy and one per bug. The running statistics of the "trained" ones are the precise
    statistics of 8 batches of the data (the weights stay random: the checks are about
    batch norm, not accuracy).

    >>> [c.name for c in demo_cases()]  # doctest: +NORMALIZE_WHITESPACE
    ['healthy', 'train-mode', 'batch-stats-at-inference', 'never-updated', 'bias-before-bn',
     'small-batch', 'preprocessing-mismatch']
    """
    gen = torch.Generator().manual_seed(seed)

    def data(n: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(n, 20, generator=gen) * 2 + 1) * scale

    def settled(model: nn.Module, scale: float = 1.0) -> nn.Module:
        from bnlab.norm.tools.precise import precise_bn

        model.train()
        with torch.no_grad():
            model(data(64, scale))  # counts a batch, as training would
        if any(getattr(m, "running_mean", None) is not None for m in model.modules()):
            precise_bn(model, [data(64, scale) for _ in range(8)])
        return model.eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        healthy = settled(_demo_mlp())
        cases = [
            DemoCase(
                "healthy",
                "running statistics settled on the data, eval mode, no bias before BN",
                healthy,
                data(64),
                {},
                (),
            ),
            DemoCase(
                "train-mode",
                "the healthy model, but model.eval() was forgotten before predicting",
                copy.deepcopy(healthy).train(),
                data(64),
                {},
                ("train-mode", "single-vs-batched"),
            ),
            DemoCase(
                "batch-stats-at-inference",
                "layers built with track_running_stats=False: eval mode still uses batch "
                "statistics (the seed 001 pitfall)",
                settled(_demo_mlp(track=False)),
                data(64),
                {},
                ("single-vs-batched",),
            ),
            DemoCase(
                "never-updated",
                "a checkpoint loaded without its running statistics (they are still 0 and 1)",
                _demo_mlp().eval(),
                data(64),
                {},
                ("stats-never-updated",),
            ),
            DemoCase(
                "bias-before-bn",
                "nn.Linear(..., bias=True) right before batch norm",
                settled(_demo_mlp(bias=True)),
                data(64),
                {},
                ("bias-before-bn",),
            ),
            DemoCase(
                "small-batch",
                "the healthy model, trained with batches of 4",
                healthy,
                data(64),
                {"train_batch_size": 4},
                ("small-batch",),
            ),
            DemoCase(
                "preprocessing-mismatch",
                "statistics collected on inputs scaled to [0, 1], inference on raw [0, 255]",
                settled(_demo_mlp(), scale=1 / 255),
                data(64),
                {},
                ("stats-mismatch", "eval-output"),
            ),
        ]
    return cases
