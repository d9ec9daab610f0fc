"""The whole ``bnlab bench`` run: configuration, the measurements, the claims, the JSON.

:func:`run_benchmark` warms the kernels up, times the backend matrix (``suite``), the
deep-CNN training step and ``fold_bn`` latency (``nets``), the compiled rows
(``compiled``), the engine against a plain PyTorch loop (``engine``), checks the
performance claims of issues 6 and 15 against what it measured, and returns one
JSON-ready document.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bnlab.bench.compiled import LAYER_SHAPES, CompiledRow, compiled_rows
from bnlab.bench.machine import measure_quietly
from bnlab.bench.nets import deep_cnn_step, fold_latency
from bnlab.bench.roofline import MODES
from bnlab.bench.shapes import shape_set
from bnlab.bench.suite import BACKENDS, LAYOUTS, CaseResult, layout_applies, run_suite

__all__ = ["BenchConfig", "check_claims", "run_benchmark"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: The shape the roofline claim is about.
ROOFLINE_SHAPE = (64, 64, 56, 56)


@dataclass(frozen=True)
class BenchConfig:
    """What ``bnlab bench`` measures.

    >>> BenchConfig(quick=True).rounds
    (3, 3)
    """

    shapes: str = "all"  # a key of bnlab.bench.shapes.SHAPE_SETS
    layouts: tuple[str, ...] = LAYOUTS
    dtypes: tuple[str, ...] = ("float32",)
    modes: tuple[str, ...] = MODES
    backends: tuple[str, ...] = BACKENDS
    budget_s: float = 1.0  # seconds of interleaved rounds per (shape, layout, mode)
    nets: bool = True  # also the deep-CNN training step and fold_bn latency
    compiled: bool = True  # also the compiled rows (torch.compile; not with quick unless asked)
    engine: bool = True  # also the engine vs plain-loop rows (not with quick unless asked)
    engine_repeats: int = 3  # engine/plain pairs per engine row (medians of these)
    data_dir: str | None = None  # MNIST for the engine rows (None: bnlab's sources)
    matrix: bool = True  # the backend matrix (shapes x layouts x modes); off: engine rows only
    quick: bool = False  # tiny shapes and networks, 3 rounds: a smoke run of every path
    stat: str = "median"  # statistic of the table and claims: "median" or "min" (see timing)
    quiet: bool = False  # wait for a quiet machine before each case, retry disturbed ones
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> tuple[int, int]:
        """``(min_rounds, max_rounds)`` per case."""
        return (3, 3) if self.quick else (7, 40)

    def resolved_shapes(self) -> str:
        return "quick" if self.quick else self.shapes


def check_claims(
    cases: Sequence[CaseResult],
    nets: dict[str, Any] | None,
    stat: str = "median",
    compiled: Sequence[CompiledRow] = (),
    engine: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The measured value and verdict of each performance claim the data can speak to.

    * fused fwd+bwd and inference within 1.5x of the roofline at 64x64x56x56 float32;
    * bnlab's default ("auto") path at most 5% slower than torch on every case;
    * deep-CNN step with bnlab BN within 1.05x of no BN, and faster than torch's BN;
    * compiled: bnlab faster than compiled torch BN on the large layers, and bnlab (eager
      and compiled) nowhere slower than torch by more than max(5%, 3 us) per call;
    * engine: never slower than plain loops of the same runs, on every row
      (single runs, and group runs of K seeds against the K plain loops in turn); and
      stacking sigmoid-MLP seeds could save at least 5% per model-step against one model
      alone (the premise of the engine's group run, judged on the inexact stacks of
      :func:`bnlab.bench.engine.batched_seeds`, the most it could save).

    Case ratios use each case's own statistic; the network ratios use ``stat``; the engine
    rows their ratio of medians (``engine`` is :func:`bnlab.bench.engine.engine_benchmark`'s
    document).
    """
    claims: list[dict[str, Any]] = []
    for r in cases:
        about_roofline = r.shape.shape == ROOFLINE_SHAPE and r.dtype == "float32"
        if about_roofline and "fused" in r.times and r.mode in ("forward+backward", "inference"):
            value = r.ratio("fused", "roofline")
            claims.append(
                {
                    "claim": f"fused {r.mode} {r.layout} within 1.5x of the roofline",
                    "measured": round(value, 3),
                    "holds": value <= 1.5,
                }
            )
    with_auto = [r for r in cases if "auto" in r.times and "native" in r.times]
    if with_auto:
        worst = max(with_auto, key=lambda r: r.ratio("auto", "native"))
        value = worst.ratio("auto", "native")
        claims.append(
            {
                "claim": "auto at most 5% slower than torch native on every case",
                "measured": round(value, 3),
                "worst_case": f"{worst.shape.label} {worst.layout} {worst.mode}",
                # The absolute gap tells a fixed per-call cost from a slower kernel.
                "worst_gap_us": round((worst.time("auto") - worst.time("native")) * 1e6, 1),
                "holds": value <= 1.05,
            }
        )
    if nets is not None and "deep_cnn_step" in nets:
        ratios = nets["deep_cnn_step"]["ratios" if stat == "median" else "min_ratios"]
        claims.append(
            {
                "claim": "deep-cnn step with bnlab BN within 1.05x of no BN",
                "measured": round(ratios["bnlab-bn/no-bn"], 3),
                "holds": ratios["bnlab-bn/no-bn"] <= 1.05,
            }
        )
        claims.append(
            {
                "claim": "deep-cnn step with bnlab BN faster than with torch BN",
                "measured": round(ratios["bnlab-bn/torch-bn"], 3),
                "holds": ratios["bnlab-bn/torch-bn"] < 1.0,
            }
        )
    claims += _compiled_claims(compiled)
    claims += _engine_claims(engine)
    return claims


def _engine_claims(engine: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The engine rows' claim (worst engine/plain ratio over every row, group rows
    included) and the batched-seed claim (the best stacking against one model alone)."""
    if not engine:
        return []
    claims: list[dict[str, Any]] = []
    rows = engine.get("rows", [])
    if rows:
        worst = max(rows, key=lambda r: r["ratio"])
        claims.append(
            {
                "claim": "the engine is never slower than the plain loop",
                "measured": round(worst["ratio"], 3),
                "worst_case": worst["label"],
                "holds": worst["ratio"] <= 1.0,
            }
        )
    seeds = engine.get("batched_seeds")
    if seeds:
        # Against one model alone where measured (what a single run trains). The engine
        # groups sigmoid-mlp's seeds because stacking pays; where even the inexact stacks
        # measured here save under 5%, its exact group run cannot save more and the
        # grouping should be revisited. What the group run itself saves: its engine rows.
        ratios = {w: r for w, r in seeds["ratios"].items() if w.endswith("/single")}
        way, best = min((ratios or seeds["ratios"]).items(), key=lambda item: item[1])
        claims.append(
            {
                "claim": f"stacking {seeds['k']} sigmoid-MLP seeds could save at least 5% "
                "per model-step against one model alone (the premise of the engine's group "
                "run; inexact stacks, the most it could save)",
                "measured": round(best, 3),
                "best_case": way,
                "holds": best <= 0.95,
            }
        )
    return claims


def _compiled_claims(rows: Sequence[CompiledRow]) -> list[dict[str, Any]]:
    """The compiled rows' claims, each on ratios paired by round (as the table shows them)."""
    claims: list[dict[str, Any]] = []
    largest = [r for r in rows if r.what.startswith("layer") and r.shape == LAYER_SHAPES[0]]
    if largest:
        worst = max(largest, key=lambda r: r.ratio("bnlab-compiled", "torch-compiled"))
        value = worst.ratio("bnlab-compiled", "torch-compiled")
        claims.append(
            {
                "claim": "compiled: bnlab faster than compiled torch BN at "
                + "x".join(map(str, LAYER_SHAPES[0])),
                "measured": round(value, 3),
                "worst_case": f"{worst.what} {worst.layout}",
                "holds": value < 1.0,
            }
        )
    for mode, (ours, theirs) in {
        "eager": ("bnlab", "torch"),
        "compiled": ("bnlab-compiled", "torch-compiled"),
    }.items():
        if not rows:
            break

        def excess(r: CompiledRow, ours: str = ours, theirs: str = theirs) -> float:
            # How far the ratio is past its allowance, max(5%, 3 us); <= 0 holds.
            allowed = max(0.05, 3e-6 / r.times[theirs].median)
            return r.ratio(ours, theirs) - 1.0 - allowed

        worst = max(rows, key=excess)
        claims.append(
            {
                "claim": f"{mode}: bnlab nowhere slower than torch by more than max(5%, 3 us)",
                "measured": round(worst.ratio(ours, theirs), 3),
                "worst_case": f"{worst.what} {'x'.join(map(str, worst.shape))} {worst.layout}",
                "worst_gap_us": round(worst.gap_us(ours, theirs), 1),
                "holds": excess(worst) <= 0,
            }
        )
    return claims


def count_cases(config: BenchConfig) -> int:
    """How many (shape, layout, dtype, mode) cases ``config`` times."""
    if not config.matrix:
        return 0
    shapes = shape_set(config.resolved_shapes())
    per_shape = [sum(layout_applies(s.shape, lay) for lay in config.layouts) for s in shapes]
    return sum(per_shape) * len(config.dtypes) * len(config.modes)


def run_benchmark(
    config: BenchConfig, on_case: Callable[[CaseResult], None] | None = None
) -> dict[str, Any]:
    """Run everything ``config`` asks for; return the JSON-ready result document.

    Returns:
        ``{"config", "environment", "warmup_s", "cases": [...], "nets": {...} | None,
        "compiled": [...], "engine": {...} | None, "claims": [...]}`` (see
        :meth:`CaseResult.as_dict` for a case, :func:`bnlab.bench.engine.engine_benchmark`
        for the engine).

    Raises:
        UnknownNameError: an unknown shape set, layout, mode or backend.
        ValueError: an unknown dtype name.
        BnlabError: the engine rows' MNIST files are missing.
    """
    from bnlab.bench.engine import ENGINE_EXPERIMENTS, engine_benchmark, load_engine_data
    from bnlab.norm.ops.library import warmup
    from bnlab.train.env import capture_environment

    for name in config.dtypes:
        if name not in _DTYPES:
            raise ValueError(f"unknown dtype {name!r}; expected one of: {', '.join(_DTYPES)}")
    dtypes = tuple(_DTYPES[name] for name in config.dtypes)
    engine_data = None
    if config.engine and not config.quick:
        # Read MNIST now: missing files must stop the run here, not after the matrix.
        engine_data = load_engine_data(ENGINE_EXPERIMENTS, data_dir=config.data_dir)
    warmup_s = warmup(dtypes)  # compile or load every kernel before timing anything
    min_rounds, max_rounds = config.rounds
    budget = 0.0 if config.quick else config.budget_s
    cases = run_suite(
        shape_set(config.resolved_shapes()) if config.matrix else [],
        layouts=config.layouts,
        dtypes=dtypes,
        modes=config.modes,
        backends=config.backends,
        budget_s=budget,
        min_rounds=min_rounds,
        max_rounds=max_rounds,
        on_case=on_case,
        stat=config.stat,
        quiet=config.quiet,
    )
    nets: dict[str, Any] | None = None
    if config.nets:
        if config.quick:
            step = deep_cnn_step(8, budget_s=0.0, min_rounds=2, max_rounds=2, num_conv_layers=3)
            fold = fold_latency(budget_s=0.0, min_rounds=2, max_rounds=2, num_conv_layers=3)
        else:
            step, level, attempts = measure_quietly(lambda: deep_cnn_step(64), quiet=config.quiet)
            step |= {"interference": level, "attempts": attempts}
            fold, level, attempts = measure_quietly(fold_latency, quiet=config.quiet)
            fold |= {"interference": level, "attempts": attempts}
        nets = {"deep_cnn_step": step, "fold_latency": fold}
    compiled: list[CompiledRow] = []
    if config.compiled:
        if config.quick:
            compiled = compiled_rows(quick=True, budget_s=0.0, min_rounds=2, max_rounds=2)
        else:
            compiled = compiled_rows(budget_s=config.budget_s * 2)
    engine: dict[str, Any] | None = None
    if config.engine:
        engine = engine_benchmark(
            quick=config.quick,
            data_dir=config.data_dir,
            repeats=config.engine_repeats,
            quiet=config.quiet,
            data=engine_data,
        )
    return {
        "config": {k: v for k, v in asdict(config).items() if k != "extra"} | config.extra,
        "environment": capture_environment(),
        "warmup_s": warmup_s,
        "cases": [r.as_dict() for r in cases],
        "nets": nets,
        "compiled": [row.as_dict() for row in compiled],
        "engine": engine,
        "claims": check_claims(cases, nets, config.stat, compiled, engine),
    }


def format_nets(nets: dict[str, Any], stat: str = "median") -> str:
    """Two short paragraphs: the deep-CNN step ratios and the fold latency."""
    key = f"{stat}_s"
    step = nets["deep_cnn_step"]
    times = {k: v[key] * 1e3 for k, v in step["times"].items()}
    ratios = step["ratios" if stat == "median" else "min_ratios"]
    lines = [
        f"deep-cnn training step (batch {step['batch']}, {step['num_conv_layers']} conv layers), "
        f"{stat} ms:",
        "  " + "  ".join(f"{k} {v:.2f}" for k, v in times.items()),
        "  " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()),
    ]
    fold = nets["fold_latency"]
    bn, folded = (fold["times"][k][key] * 1e3 for k in ("bn", "folded"))
    lines.append(
        f"single-image inference: with BN {bn:.3f} ms, folded {folded:.3f} ms "
        f"(speedup {bn / folded:.2f}x, max relative difference {fold['max_rel_diff']:.1e})"
    )
    return "\n".join(lines)


def format_claims(claims: Sequence[dict[str, Any]]) -> str:
    """One line per claim: HOLDS/FAILS, the claim, the measured value."""
    lines = []
    for c in claims:
        verdict = "HOLDS" if c["holds"] else "FAILS"
        details = [f"worst: {c['worst_case']}"] if "worst_case" in c else []
        if "best_case" in c:  # a claim that one case suffices for: the one that decides
            details.append(f"best: {c['best_case']}")
        if "worst_gap_us" in c:
            details.append(f"{c['worst_gap_us']:+.1f} us per call")
        where = f" ({', '.join(details)})" if details else ""
        measured = c["measured"]
        shown = (
            f"{measured:.3f}"
            if isinstance(measured, float) and math.isfinite(measured)
            else measured
        )
        lines.append(f"  [{verdict}] {c['claim']}: {shown}{where}")
    return "\n".join(lines)
