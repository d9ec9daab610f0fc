"""The report reads damaged run directories: a torn last line is skipped, a run with corrupt
files is shown as corrupt with the reason (not dropped, not fatal for the others), and the
data each run read is named, runs not made on the published data marked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import Outcome

from bnlab.report.results import load_results

Cli = Callable[..., Outcome]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Four finished quick deep-cnn runs (bn, seeds 0-3)."""
    from bnlab.cli.main import main

    out = tmp_path_factory.mktemp("report") / "runs"
    argv = ["run", "deep-cnn", "--variant", "bn", "--quick", "--no-progress", "--seeds", "4"]
    argv += ["--set", "num_batches=4", "--set", "num_conv_layers=2", "--threads", "1"]
    assert main([*argv, "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    return out


def test_damaged_runs_are_shown_as_corrupt_and_the_rest_reported(cli: Cli, runs: Path) -> None:
    bn = runs / "deep-cnn" / "bn"
    with (bn / "seed-0" / "metrics.jsonl").open("a") as f:
        f.write('{"phase": "train", "tag": "tr')  # torn last line: a kill mid-write
    log = bn / "seed-1" / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([*lines[:3], "garbage\n", *lines[3:]]))
    (bn / "seed-2" / "config.json").write_text("{")
    (bn / "seed-3" / "result.json").write_text("[1, 2]")

    results = load_results(runs)["deep-cnn"]
    status = {run.path.name: run.status for run in results.all_runs()}
    assert status == {
        "seed-0": "complete",
        "seed-1": "corrupt",
        "seed-2": "corrupt",
        "seed-3": "corrupt",
    }
    problems = {run.path.name: run.problem for run in results.all_runs()}
    assert "metrics.jsonl:4: expected a JSON record" in str(problems["seed-1"])
    assert "config.json: expected a JSON document" in str(problems["seed-2"])
    assert "result.json: expected a JSON object, found list" in str(problems["seed-3"])

    outcome = cli("report", str(runs))
    assert outcome.code == 0, outcome.err
    md = (runs / "report.md").read_text()
    assert "| deep-cnn | 1/4 runs finished, 3 corrupt |" in md
    assert md.count("| corrupt |") == 3
    assert "corrupt: " in md and "expected a JSON record" in md


def test_the_report_names_the_data_and_marks_unpublished_runs(runs: Path) -> None:
    from bnlab.experiments import all_experiments
    from bnlab.report import build_report

    out = runs.parent / "again"
    build_report(runs, out, experiments=all_experiments())
    md = (out / "report.md").read_text()
    assert "Data: mnist: NOT the published data" in md
    assert "their numbers say nothing about the published data set" in md
    data = json.loads((runs / "deep-cnn" / "bn" / "seed-0" / "data.json").read_text())
    assert data["dataset"] == "mnist" and data["published"] is False
    assert [f["name"] for f in data["files"]] == [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in data["files"])
