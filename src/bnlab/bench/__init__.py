"""Benchmarks: batch norm against torch and the roofline, networks, the experiment engine.

``shapes`` (what is timed), ``timing`` (interleaved medians), ``roofline`` (the bandwidth
floor), ``suite`` (the backend matrix and its table), ``nets`` (deep-CNN training step and
``fold_bn`` latency), ``compiled`` (eager vs ``torch.compile``), ``engine`` (the experiment
engine's runs and group runs against plain PyTorch loops, batched seeds; imported on use,
it loads the experiments), ``report`` (the whole ``bnlab bench`` run and its JSON).
"""

from __future__ import annotations

from bnlab.bench.nets import deep_cnn_step, fold_latency
from bnlab.bench.report import run_benchmark
from bnlab.bench.roofline import MODES, PASSES, copy_bandwidth, roofline_seconds
from bnlab.bench.shapes import SHAPE_SETS, BenchShape, shape_set
from bnlab.bench.suite import BACKENDS, LAYOUTS, CaseResult, format_table, run_suite
from bnlab.bench.timing import Timing, interleaved

__all__ = [
    "BACKENDS",
    "LAYOUTS",
    "MODES",
    "PASSES",
    "SHAPE_SETS",
    "BenchShape",
    "CaseResult",
    "Timing",
    "copy_bandwidth",
    "deep_cnn_step",
    "fold_latency",
    "format_table",
    "interleaved",
    "roofline_seconds",
    "run_benchmark",
    "run_suite",
    "shape_set",
]
