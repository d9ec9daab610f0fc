"""The benchmark library and ``bnlab bench``: timing, roofline, shapes, table, JSON, CLI."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from bnlab.bench import (
    BACKENDS,
    LAYOUTS,
    MODES,
    SHAPE_SETS,
    copy_bandwidth,
    format_table,
    interleaved,
    machine,
    roofline_seconds,
    run_suite,
    shape_set,
)
from bnlab.bench.report import BenchConfig, check_claims, count_cases, format_claims
from bnlab.bench.shapes import BenchShape, deep_cnn_shapes
from bnlab.bench.suite import layout_applies, make_candidates
from bnlab.bench.timing import STATS, paired_ratio
from bnlab.cli import cmd_bench
from bnlab.cli.main import main
from bnlab.errors import UnknownNameError


def test_interleaved_times_every_candidate_and_orders_them() -> None:
    calls = {"fast": 0, "slow": 0}

    def fast() -> None:
        calls["fast"] += 1

    def slow() -> None:
        calls["slow"] += 1
        sum(range(20_000))

    t = interleaved({"fast": fast, "slow": slow}, min_rounds=4, max_rounds=4, budget_s=0)
    assert t["fast"].samples == t["slow"].samples == 4
    assert t["fast"].median < t["slow"].median
    assert t["slow"].min <= t["slow"].q25 <= t["slow"].median <= t["slow"].q75
    assert t["slow"].stat("min") == t["slow"].min
    with pytest.raises(ValueError, match="unknown statistic 'mean'"):
        t["slow"].stat("mean")
    assert calls["fast"] >= 4 * t["fast"].calls_per_sample  # warm-up and calibration extra
    with pytest.raises(ValueError, match="at least one candidate"):
        interleaved({})
    with pytest.raises(ValueError, match="min_rounds"):
        interleaved({"f": fast}, min_rounds=0)


def test_rounds_rotate_the_order_and_ratios_pair_the_rounds() -> None:
    order: list[str] = []

    def make(name: str, cost: float) -> object:
        def fn() -> None:
            order.append(name)
            time.sleep(cost)

        return fn

    candidates = {"a": make("a", 2e-3), "b": make("b", 1e-3), "c": make("c", 1e-3)}
    t = interleaved(candidates, min_rounds=5, max_rounds=5, budget_s=0, warmup=1)
    timed = order[-15:]  # after warm-up and calibration: 5 rounds of one call each
    assert [timed[i * 3] for i in range(5)] == ["a", "b", "c", "a", "b"]
    assert len(t["a"].rounds) == len(t["b"].rounds) == 5
    assert paired_ratio(t["a"], t["b"]) == pytest.approx(2.0, rel=0.25)
    assert paired_ratio(t["a"], t["b"], scale=2.0) == pytest.approx(1.0, rel=0.25)


def test_roofline_counts_passes_at_copy_bandwidth() -> None:
    assert MODES == ("forward", "backward", "forward+backward", "inference")
    bandwidth = copy_bandwidth(1000, 1e-6)  # 2000 bytes in a microsecond
    assert bandwidth == pytest.approx(2e9)
    # A copy is 2 passes, so an inference (2 passes) has the copy's own time as its floor.
    assert roofline_seconds("inference", 1000, bandwidth) == pytest.approx(1e-6)
    assert roofline_seconds("forward+backward", 1000, bandwidth) == pytest.approx(2.5e-6)
    with pytest.raises(ValueError, match="unknown mode 'sideways'"):
        roofline_seconds("sideways", 1000, bandwidth)
    with pytest.raises(ValueError, match="positive"):
        copy_bandwidth(1000, 0.0)


def test_shape_sets_cover_the_seeds_and_the_large_shapes() -> None:
    deep = deep_cnn_shapes(64)
    assert deep[0].shape == (64, 4, 28, 28) and deep[2].shape == (64, 12, 14, 14)
    assert deep[8].shape == (64, 36, 4, 4) and deep[18].shape == (64, 76, 1, 1)
    assert deep[-1].shape == (64, 100)
    everything = {s.shape for s in shape_set("all")}
    for shape in [(64, 64, 56, 56), (128, 256, 14, 14), (256, 1024), (60, 100), (32, 32)]:
        assert shape in everything
    assert (250, 16, 32, 32) in everything
    with pytest.raises(UnknownNameError, match="unknown shape set 'huge'"):
        shape_set("huge")


def test_layouts_that_do_not_change_the_bytes_are_skipped() -> None:
    assert layout_applies((8, 4, 5, 5), "channels_last")
    assert layout_applies((2, 3, 4, 5, 6), "channels_last")
    assert not layout_applies((64, 76, 1, 1), "channels_last")  # same bytes as NCHW
    assert not layout_applies((32, 32), "channels_last")
    assert layout_applies((32, 32), "contiguous")


@pytest.mark.parametrize("mode", MODES)
def test_candidates_compute_batch_norm(mode: str) -> None:
    candidates = make_candidates((4, 3, 5, 5), "channels_last", torch.float32, mode)
    assert set(candidates) == {*BACKENDS, "copy"}
    for name in BACKENDS:
        out = candidates[name]()
        if mode in ("forward", "inference"):
            assert isinstance(out, torch.Tensor) and out.shape == (4, 3, 5, 5)
        else:
            grads = out
            assert isinstance(grads, tuple) and len(grads) == 3
            assert grads[0].shape == (4, 3, 5, 5) and grads[1].shape == (3,)
    with pytest.raises(UnknownNameError, match="unknown backend 'cuda'"):
        make_candidates((4, 3), "contiguous", torch.float32, mode, backends=("cuda",))


def test_suite_table_and_claims() -> None:
    shapes = [BenchShape("test", (6, 4, 5, 5))]
    results = run_suite(shapes, modes=("inference",), budget_s=0, min_rounds=2, max_rounds=2)
    assert [(r.layout, r.mode) for r in results] == [
        ("contiguous", "inference"),
        ("channels_last", "inference"),
    ]
    r = results[0]
    assert set(r.times) == set(BACKENDS)
    assert r.nbytes == 6 * 4 * 5 * 5 * 4
    assert math.isclose(r.roofline, r.copy.median)  # inference = 2 passes = one copy
    assert r.auto_backend == "native"  # 600 values: below the fused kernel's threshold
    table = format_table(results)
    assert "6x4x5x5" in table and "NHWC" in table and "torch/auto" in table
    claims = check_claims(results, None)
    assert claims[0]["claim"].startswith("auto at most 5% slower")
    assert claims[0]["measured"] == pytest.approx(
        max(x.ratio("auto", "native") for x in results), abs=1e-3
    )
    worst = max(results, key=lambda x: x.ratio("auto", "native"))
    gap_us = (worst.time("auto") - worst.time("native")) * 1e6
    assert claims[0]["worst_gap_us"] == pytest.approx(gap_us, abs=0.06)
    assert f"{gap_us:+.1f} us per call" in format_claims(claims)


def test_cli_choices_match_the_library() -> None:
    assert set(cmd_bench.SHAPE_SETS) == set(SHAPE_SETS)
    assert cmd_bench.LAYOUTS == LAYOUTS
    assert cmd_bench.MODES == MODES
    assert cmd_bench.BACKENDS == BACKENDS
    assert cmd_bench.STATS == STATS
    assert count_cases(BenchConfig(quick=True)) == 3 * len(MODES)  # conv x2 layouts, dense x1


def test_bench_quick_writes_json_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "bench.json"
    assert main(["bench", "--quick", "--no-progress", "--stat", "min", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fused/roof" in printed and "deep-cnn training step" in printed
    assert "claims:" in printed and f"wrote {out}" in printed
    document = json.loads(out.read_text())
    assert {"config", "environment", "cases", "nets", "claims", "warmup_s"} <= set(document)
    assert len(document["cases"]) == 3 * len(MODES)
    case = document["cases"][0]
    assert set(case["times"]) == set(BACKENDS)
    assert case["roofline_s"] > 0 and case["copy_bandwidth_gb_s"] > 0
    assert case["stat"] == "min" and case["min_roofline_s"] == case["roofline_s"]
    assert all(t["min_s"] <= t["median_s"] for t in case["times"].values())
    assert document["nets"]["fold_latency"]["max_rel_diff"] < 1e-5
    assert set(document["nets"]["deep_cnn_step"]["ratios"]) == {
        "bnlab-bn/no-bn",
        "torch-bn/no-bn",
        "bnlab-bn/torch-bn",
    }
    assert not list(tmp_path.glob("deep/*.tmp"))  # written atomically, nothing left behind


def test_bench_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--budget", "-1"])
    assert exc.value.code == 2
    assert "expected seconds >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--shapes", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_interference_is_what_others_used(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = os.cpu_count() or 1
    before = machine.Snapshot(busy_s=100.0, own_s=5.0, wall_s=10.0)
    # 2 s of wall time: all cores busy, 1 CPU-second of it ours.
    after = machine.Snapshot(busy_s=100.0 + 2.0 * cores, own_s=6.0, wall_s=12.0)
    assert machine.interference(before, after) == pytest.approx((2.0 * cores - 1.0) / (2 * cores))
    assert machine.interference(before, machine.Snapshot(None, 6.0, 12.0)) is None

    levels = iter([0.5, 0.2, 0.01])
    monkeypatch.setattr(machine, "wait_for_quiet", lambda *a, **k: 0.0)
    monkeypatch.setattr(machine, "interference", lambda *a: next(levels))
    calls = []
    result, level, attempts = machine.measure_quietly(
        lambda: calls.append(1) or len(calls), quiet=True, attempts=5, max_interference=0.05
    )
    assert (result, level, attempts) == (3, 0.01, 3)  # retried until quiet enough
    levels = iter([0.5, 0.2])
    result, level, attempts = machine.measure_quietly(lambda: len(calls), quiet=True, attempts=2)
    assert (level, attempts) == (0.2, 2)  # never quiet: the least disturbed attempt is kept
    levels = iter([0.9])
    result, level, attempts = machine.measure_quietly(lambda: "once", quiet=False)
    assert attempts == 1 and result == "once"
