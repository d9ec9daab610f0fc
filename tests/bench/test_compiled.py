"""The compiled rows of ``bnlab bench``: what they time computes batch norm, and their
claims follow the stated rule (bnlab within max(5%, 3 us) of torch, faster when compiled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnlab.bench.compiled import (
    CANDIDATES,
    LAYER_SHAPES,
    CompiledRow,
    _layer_candidates,
    format_compiled,
)
from bnlab.bench.report import check_claims
from bnlab.bench.timing import Timing
from bnlab.cli.main import main


def _row(what: str, **per_call_us: float) -> CompiledRow:
    times = {
        name: Timing(us * 1e-6, us * 1e-6, us * 1e-6, 3, 1, us * 1e-6, (us * 1e-6,) * 3)
        for name, us in per_call_us.items()
    }
    return CompiledRow(what, LAYER_SHAPES[0], "contiguous", times)


def test_claims_allow_five_percent_or_three_microseconds() -> None:
    fine = _row(
        "layer eval", **{"torch": 10, "bnlab": 12.9, "torch-compiled": 1000, "bnlab-compiled": 900}
    )
    claims = {c["claim"]: c for c in check_claims([], None, compiled=[fine])}
    assert all(c["holds"] for c in claims.values()), claims
    slow = _row(
        "layer eval", **{"torch": 1000, "bnlab": 1060, "torch-compiled": 10, "bnlab-compiled": 13.5}
    )
    claims = {c["claim"]: c for c in check_claims([], None, compiled=[slow])}
    verdicts = {name.split(":")[0]: c["holds"] for name, c in claims.items()}
    assert verdicts == {"compiled": False, "eager": False}
    eager = next(c for c in claims.values() if c["claim"].startswith("eager"))
    assert eager["worst_gap_us"] == pytest.approx(60.0)


@pytest.mark.parametrize(
    "training", [pytest.param(True, marks=pytest.mark.slow), False], ids=["train", "eval"]
)
def test_the_four_candidates_compute_the_same_batch_norm(training: bool) -> None:
    torch._dynamo.reset()
    candidates = _layer_candidates((4, 8, 6, 6), "channels_last", training)
    assert list(candidates) == list(CANDIDATES)
    outputs = [fn() for fn in candidates.values()]
    if not training:  # eval returns the output; training returns backward's None
        for out in outputs[1:]:
            torch.testing.assert_close(out, outputs[0])


def test_format_compiled_prints_every_row() -> None:
    row = _row("resnet18 train step", **dict.fromkeys(CANDIDATES, 100.0)).as_dict()
    text = format_compiled([row, row])
    assert text.count("resnet18 train step") == 2 and "1.000" in text


@pytest.mark.slow
def test_bench_quick_with_compiled_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--compiled", "--no-progress", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert {row["what"] for row in document["compiled"]} == {
        "layer train f+b",
        "layer eval",
        "resnet18 train step",
    }
    assert any(c["claim"].startswith("compiled:") for c in document["claims"])
