"""The batch-norm benchmark matrix: shapes x layouts x modes, every backend side by side.

For each case the candidates (torch's ``F.batch_norm``, and bnlab's ``batch_norm`` with the
reference, fused and auto backends) and a plain copy of the tensor are timed in the same
interleaved rounds; the copy gives the bandwidth, hence the roofline, of that very moment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.bench.machine import measure_quietly
from bnlab.bench.roofline import MODES, copy_bandwidth, roofline_seconds
from bnlab.bench.shapes import BenchShape
from bnlab.bench.timing import Timing, interleaved, paired_ratio
from bnlab.errors import UnknownNameError
from bnlab.norm.ops import dispatch
from bnlab.norm.ops.functional import batch_norm

__all__ = [
    "BACKENDS",
    "LAYOUTS",
    "CaseResult",
    "format_table",
    "make_candidates",
    "run_suite",
]

#: What is compared: torch's own kernel, then bnlab's backends through ``batch_norm``.
BACKENDS: tuple[str, ...] = ("native", "reference", "fused", "auto")
LAYOUTS: tuple[str, ...] = ("contiguous", "channels_last")
_EPS = 1e-5
_MOMENTUM = 0.1


@dataclass
class CaseResult:
    """Times of every backend for one (shape, layout, dtype, mode), with the roofline."""

    shape: BenchShape
    layout: str
    dtype: str
    mode: str
    times: dict[str, Timing]
    copy: Timing
    auto_backend: str
    nbytes: int
    stat: str = "median"  # the statistic of the times that properties and ratios use
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bandwidth(self) -> float:
        """Copy bandwidth (bytes/s) measured in the same rounds."""
        return copy_bandwidth(self.nbytes, self.copy.stat(self.stat))

    @property
    def roofline(self) -> float:
        """Bandwidth-bound time of this mode (seconds)."""
        return roofline_seconds(self.mode, self.nbytes, self.bandwidth)

    def time(self, name: str) -> float:
        """The time (seconds, statistic :attr:`stat`) of a backend, or ``"roofline"``."""
        return self.roofline if name == "roofline" else self.times[name].stat(self.stat)

    def ratio(self, numerator: str, denominator: str) -> float:
        """``time(numerator) / time(denominator)``; either may be ``"roofline"``.

        With the median statistic the ratio is paired by round (:func:`paired_ratio`):
        the median of the per-round ratios, which a drifting machine speed cannot bias.
        The roofline of a round is its copy time scaled by the mode's passes.
        """
        if self.stat != "median":
            return self.time(numerator) / self.time(denominator)
        roof_scale = self.roofline / self.copy.median  # passes of the mode / 2 (the copy)
        num, num_scale = self._series(numerator, roof_scale)
        den, den_scale = self._series(denominator, roof_scale)
        return paired_ratio(num, den, den_scale / num_scale)

    def _series(self, name: str, roof_scale: float) -> tuple[Timing, float]:
        if name == "roofline":
            return self.copy, roof_scale
        return self.times[name], 1.0

    def as_dict(self) -> dict[str, Any]:
        by_min = dataclasses.replace(self, stat="min")
        return {
            "source": self.shape.source,
            "shape": list(self.shape.shape),
            "layout": self.layout,
            "dtype": self.dtype,
            "mode": self.mode,
            "numel": self.shape.numel,
            "nbytes": self.nbytes,
            "auto_backend": self.auto_backend,
            "times": {name: t.as_dict() for name, t in self.times.items()},
            "copy": self.copy.as_dict(),
            "copy_bandwidth_gb_s": self.bandwidth / 1e9,
            "roofline_s": self.roofline,
            "stat": self.stat,
            "min_copy_bandwidth_gb_s": by_min.bandwidth / 1e9,
            "min_roofline_s": by_min.roofline,
            **self.extra,
        }


def _memory_format(shape: tuple[int, ...], layout: str) -> torch.memory_format | None:
    """The torch memory format of ``layout`` for a tensor of ``shape``; None if n/a."""
    if layout == "contiguous":
        return torch.contiguous_format
    if layout == "channels_last":
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape))
    raise UnknownNameError("layout", layout, LAYOUTS)


def layout_applies(shape: tuple[int, ...], layout: str) -> bool:
    """Whether ``layout`` gives a distinct memory layout for ``shape`` (not a duplicate).

    Channels-last needs rank 4 or 5, and a tensor with one channel or one spatial
    position has the same bytes in both layouts, so it is timed once.
    """
    if layout == "contiguous":
        return True
    fmt = _memory_format(shape, layout)
    if fmt is None:
        return False
    return not torch.empty(shape, device="meta").contiguous(memory_format=fmt).is_contiguous()


def _call(backend: str) -> Callable[..., Tensor]:
    if backend == "native":
        return F.batch_norm

    def fn(*args: Any) -> Tensor:
        return batch_norm(*args, backend=backend)

    return fn


def make_candidates(
    shape: tuple[int, ...],
    layout: str,
    dtype: torch.dtype,
    mode: str,
    backends: Sequence[str] = BACKENDS,
) -> dict[str, Callable[[], object]]:
    """One function of no arguments per backend running ``mode`` once, plus ``"copy"``.

    Modes: ``"forward"`` (training forward, recording the graph as in training),
    ``"backward"`` (the backward of one retained training forward), ``"forward+backward"``
    and ``"inference"`` (eval mode under ``torch.no_grad``). ``"copy"`` copies the input
    into a preallocated tensor of the same layout (the bandwidth probe).

    Raises:
        UnknownNameError: an unknown mode, layout or backend.
    """
    if mode not in MODES:
        raise UnknownNameError("mode", mode, MODES)
    for name in backends:
        if name not in BACKENDS:
            raise UnknownNameError("backend", name, BACKENDS)
    fmt = _memory_format(shape, layout) or torch.contiguous_format
    c = shape[1]
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    w = (torch.rand(c, dtype=dtype) + 0.5).requires_grad_(mode != "inference")
    b = torch.randn(c, dtype=dtype).requires_grad_(mode != "inference")
    if mode != "inference":
        x.requires_grad_(True)
    inputs = (x, w, b)
    candidates: dict[str, Callable[[], object]] = {}
    for name in backends:
        fn = _call(name)
        rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
        if mode == "forward":
            candidates[name] = _forward(fn, x, rm, rv, w, b)
        elif mode == "backward":
            y = fn(x, rm, rv, w, b, True, _MOMENTUM, _EPS)
            candidates[name] = _backward(y, inputs, grad)
        elif mode == "forward+backward":
            candidates[name] = _forward_backward(fn, x, rm, rv, w, b, grad)
        else:
            candidates[name] = _inference(fn, x.detach(), rm, rv, w.detach(), b.detach())
    out = torch.empty_like(x, requires_grad=False)
    source = x.detach()
    candidates["copy"] = lambda: out.copy_(source)
    return candidates


def _forward(
    fn: Callable[..., Tensor], x: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor
) -> Callable[[], object]:
    return lambda: fn(x, rm, rv, w, b, True, _MOMENTUM, _EPS)


def _backward(y: Tensor, inputs: tuple[Tensor, ...], grad: Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(y, inputs, grad, retain_graph=True)


def _forward_backward(
    fn: Callable[..., Tensor],
    x: Tensor,
    rm: Tensor,
    rv: Tensor,
    w: Tensor,
    b: Tensor,
    grad: Tensor,
) -> Callable[[], object]:
    def step() -> object:
        y = fn(x, rm, rv, w, b, True, _MOMENTUM, _EPS)
        return torch.autograd.grad(y, (x, w, b), grad)

    return step


def _inference(
    fn: Callable[..., Tensor], x: Tensor, rm: Tensor, rv: Tensor, w: Tensor, b: Tensor
) -> Callable[[], object]:
    def infer() -> object:
        with torch.no_grad():
            return fn(x, rm, rv, w, b, False, _MOMENTUM, _EPS)

    return infer


def run_suite(
    shapes: Sequence[BenchShape],
    *,
    layouts: Sequence[str] = LAYOUTS,
    dtypes: Sequence[torch.dtype] = (torch.float32,),
    modes: Sequence[str] = MODES,
    backends: Sequence[str] = BACKENDS,
    budget_s: float = 1.0,
    min_rounds: int = 5,
    max_rounds: int = 30,
    on_case: Callable[[CaseResult], None] | None = None,
    stat: str = "median",
    quiet: bool = False,
) -> list[CaseResult]:
    """Time every (shape, layout, dtype, mode) for every backend; see :func:`make_candidates`.

    Layouts that do not apply to a shape (:func:`layout_applies`) are skipped.

    Args:
        shapes, layouts, dtypes, modes, backends: the matrix.
        budget_s, min_rounds, max_rounds: per case, as :func:`bnlab.bench.timing.interleaved`.
        on_case: called with each result as it is measured (progress, printing).
        stat: ``"median"`` or ``"min"``, the statistic the results' ratios use.
        quiet: wait for a quiet machine before each case and repeat disturbed cases
            (:func:`bnlab.bench.machine.measure_quietly`); each result records the
            interference it was measured under.

    Returns:
        One :class:`CaseResult` per case, in matrix order.
    """
    results = []
    for bench_shape in shapes:
        for layout in layouts:
            if not layout_applies(bench_shape.shape, layout):
                continue
            for dtype in dtypes:
                probe = torch.empty(bench_shape.shape, dtype=dtype)
                fmt = _memory_format(bench_shape.shape, layout)
                probe = probe.contiguous(memory_format=fmt or torch.contiguous_format)
                for mode in modes:
                    candidates = make_candidates(bench_shape.shape, layout, dtype, mode, backends)
                    timings, level, attempts = measure_quietly(
                        lambda c=candidates: interleaved(  # type: ignore[misc]
                            c, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s
                        ),
                        quiet=quiet,
                    )
                    copy = timings.pop("copy")
                    result = CaseResult(
                        shape=bench_shape,
                        layout=layout,
                        dtype=str(dtype).replace("torch.", ""),
                        mode=mode,
                        times=timings,
                        copy=copy,
                        auto_backend=dispatch.resolve_backend("auto", probe, mode != "inference"),
                        nbytes=probe.numel() * probe.element_size(),
                        stat=stat,
                        extra={"interference": level, "attempts": attempts},
                    )
                    results.append(result)
                    if on_case is not None:
                        on_case(result)
                    del candidates
    return results


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


_SHORT_LAYOUT = {"contiguous": "NCHW", "channels_last": "NHWC"}


def format_table(results: Sequence[CaseResult]) -> str:
    """A plain-text table: ms per backend, roofline, and the ratios that matter.

    Times are each result's statistic (:attr:`CaseResult.stat`, the median by default).

    ``torch/auto`` > 1 means bnlab's default path is faster than torch's kernel;
    ``fused/roof`` is how far the fused kernel is from the bandwidth limit (1.0 = at it).
    """
    backends = [b for b in BACKENDS if results and b in results[0].times]
    header = ["shape", "layout", "dtype", "mode", *(f"{b} ms" for b in backends)]
    header += ["roof ms", "GB/s", "auto->", "torch/auto", "fused/roof"]
    show_others = any(r.extra.get("interference") is not None for r in results)
    if show_others:
        header.append("others%")  # share of the cores other processes used meanwhile
    rows = [header]
    for r in results:
        row = [r.shape.label, _SHORT_LAYOUT.get(r.layout, r.layout), r.dtype, r.mode]
        row += [_ms(r.time(b)) for b in backends]
        row += [_ms(r.roofline), f"{r.bandwidth / 1e9:.1f}", r.auto_backend]
        row.append(f"{r.ratio('native', 'auto'):.2f}" if "auto" in r.times else "-")
        row.append(f"{r.ratio('fused', 'roofline'):.2f}" if "fused" in r.times else "-")
        if show_others:
            level = r.extra.get("interference")
            row.append("-" if level is None else f"{100 * level:.0f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i < 4 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
