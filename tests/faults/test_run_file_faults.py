"""Run files that are valid JSON of the wrong shape, not regular files, copies or edits: the
report shows each such run as corrupt with the file and the reason, counts it nowhere, and
never crashes or hangs; ``run`` refuses the directory in one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import Outcome

from bnlab.report.results import load_results

Cli = Callable[..., Outcome]
QUICK = ("--quick", "--no-progress", "--threads", "1")
TINY = ("--set", "num_batches=4", "--set", "num_conv_layers=1", "--set", "dense_units=4")


def _lines(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


# seed -> (what is done to runs/deep-cnn/bn/seed-<k>, the reason the report must give)
DAMAGE: dict[int, tuple[Callable[[Path], None], str]] = {
    0: (lambda r: _lines(r / "metrics.jsonl", 2, "5"), "metrics.jsonl:2: expected a metrics"),
    1: (lambda r: _lines(r / "metrics.jsonl", 2, "[1, 2]"), "expected a JSON object, found list"),
    2: (lambda r: _lines(r / "metrics.jsonl", 1, '{"tag": "train"}'), "a field 'step'"),
    3: (
        lambda r: _edit(r / "config.json", lambda d: d.update(seed="zero")),
        "config.json: seed: expected a non-negative integer, found str",
    ),
    4: (
        lambda r: _edit(r / "config.json", lambda d: d.update(config=[1, 2])),
        "config.json: config: expected a JSON object, found list",
    ),
    5: (
        lambda r: _edit(r / "result.json", lambda d: d.update(metrics=[1])),
        "result.json: metrics: expected an object of numbers, found list",
    ),
    6: (
        lambda r: (r / "failed.json").write_text('["an", "error"]'),
        "failed.json: expected a JSON object, found list",
    ),
    7: (
        lambda r: (r / "data.json").write_text("5"),
        "data.json: expected a JSON object, found int",
    ),
    8: (
        lambda r: _edit(r / "result.json", lambda d: d.update(status="failed")),
        'result.json: status: expected "complete", found str "failed"',
    ),
    9: (
        lambda r: _fifo(r / "metrics.jsonl"),
        "metrics.jsonl: expected a regular file, found a FIFO",
    ),
    10: (lambda r: _dev_zero(r / "metrics.jsonl"), "found a character device"),
    11: (lambda r: (r / "config.json").unlink(), "config.json: expected a file, found none"),
    12: (
        lambda r: _edit(r / "config.json", lambda d: d.update(quick=False)),
        "says quick: false, but its config has the --quick sizes",
    ),
    13: (
        lambda r: _edit(r / "config.json", lambda d: d["config"].update(batch_size="32")),
        "config.batch_size: expected int, found str",
    ),
}
SEEDS = len(DAMAGE) + 1  # the last seed stays intact


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Finished tiny quick deep-cnn runs (bn, seeds 0..SEEDS-1)."""
    from bnlab.cli.main import main

    out = tmp_path_factory.mktemp("pristine") / "runs"
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--seeds", str(SEEDS)]
    assert main([*argv, "--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    return out


@pytest.mark.timeout(120)  # a FIFO once hung the report
def test_every_damaged_run_is_corrupt_with_its_file_and_reason(
    cli: Cli, pristine: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(pristine, runs, symlinks=True)
    bn = runs / "deep-cnn" / "bn"
    for seed, (damage, _) in DAMAGE.items():
        damage(bn / f"seed-{seed}")
    intact = bn / f"seed-{SEEDS - 1}"
    twin = bn / f"seed-0{SEEDS - 1}"
    shutil.copytree(intact, twin)  # the same seed twice (seed-14, seed-014)
    shutil.copytree(intact, bn / "seed-99")  # a copy under another seed's name

    outcome = cli("report", str(runs))
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err

    from bnlab.experiments import all_experiments

    results = load_results(runs, all_experiments())["deep-cnn"]
    by_name = {run.path.name: run for run in results.all_runs()}
    for seed, (_, reason) in DAMAGE.items():
        run = by_name[f"seed-{seed}"]
        assert run.status == "corrupt", (seed, run.problem)
        assert reason in str(run.problem), (seed, run.problem)
    assert by_name[intact.name].status == "complete"
    assert "not a run directory name bnlab writes" in str(by_name[twin.name].problem)
    assert "names the run deep-cnn/bn/seed-" in str(by_name["seed-99"].problem)
    assert "lies in deep-cnn/bn/seed-99" in str(by_name["seed-99"].problem)
    assert [r.path.name for r in results.complete("bn")] == [intact.name]

    md = (runs / "report.md").read_text()
    corrupt = len(DAMAGE) + 2
    assert f"| deep-cnn | 1/{SEEDS + 2} runs finished, {corrupt} corrupt |" in md
    assert md.count("| corrupt |") == corrupt
    # One finished seed: every mean is over n = 1, never over a copy or an edited run.
    assert f"| bn | 1/{SEEDS + 2} |" in md


def _one_run(pristine: Path, tmp_path: Path) -> Path:
    """A runs directory holding a copy of the finished seed-0 only."""
    runs = tmp_path / "runs"
    shutil.copytree(pristine / "deep-cnn" / "bn" / "seed-0", runs / "deep-cnn" / "bn" / "seed-0")
    return runs


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("seed", "name"),
    [
        (3, "config.json"),
        (4, "config.json"),
        (5, "result.json"),
        (7, "data.json"),
        (8, "result.json"),
        (9, "metrics.jsonl"),
        (10, "metrics.jsonl"),
    ],
)
def test_run_refuses_a_damaged_run_in_one_line(
    cli: Cli, pristine: Path, tmp_path: Path, mnist_dir: Path, seed: int, name: str
) -> None:
    runs = _one_run(pristine, tmp_path)
    damage, reason = DAMAGE[seed]
    damage(runs / "deep-cnn" / "bn" / "seed-0")
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    assert outcome.code == 2, outcome
    line = outcome.error_line
    assert f"seed-0/{name}" in line and reason.split(": ")[-1] in line
    assert "--restart" in line
    if seed in (9, 10):  # not a regular file: --restart replaces it
        assert cli(*argv, "--data-dir", str(mnist_dir), "--restart").code == 0


def test_run_refuses_to_continue_a_damaged_log(
    cli: Cli, pristine: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    runs = _one_run(pristine, tmp_path)
    run = runs / "deep-cnn" / "bn" / "seed-0"
    (run / "result.json").unlink()  # unfinished: the resume keeps the log up to its checkpoint
    _lines(run / "metrics.jsonl", 1, "5")
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    assert outcome.code == 2
    line = outcome.error_line
    assert "seed-0/metrics.jsonl:1: expected a metrics record" in line and "--restart" in line


def test_run_refuses_run_files_without_their_config(
    cli: Cli, pristine: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    runs = _one_run(pristine, tmp_path)
    (runs / "deep-cnn" / "bn" / "seed-0" / "config.json").unlink()
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    assert outcome.code == 2
    assert "but no config.json" in outcome.error_line and "--restart" in outcome.error_line


def test_a_non_utf8_out_directory_is_reported(cli: Cli, tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / os.fsdecode(b"runs-\xff")
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(out)]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    assert outcome.code == 0, outcome.err
    outcome = cli("report", str(out))
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err
    md = (out / "report.md").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert "runs-\ufffd" in md  # the undecodable byte shown as U+FFFD
